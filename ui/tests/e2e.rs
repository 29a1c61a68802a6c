//! The console end to end, in a real window: a real `outpost serve` (SQLite, embedded broker,
//! a trust root) with real `outpost-agent`s serving a signed model, and the built console
//! driven through tauri-driver and WebKitWebDriver under a virtual X server.
//!
//! The operator connects with a URL and token, sees the fleet, opens a device, the models,
//! acknowledges the drift alert the drift monitor opened for the device fed shifted data,
//! creates a rollout in the wizard, approves it by signing with the approver's encrypted key
//! file, starts it and watches it progress, then exports the audit trail and verifies the
//! export. Every view is saved as a screenshot under `docs/screenshots/`.
//!
//! It needs the built frontend (`npm run build` in `ui/`), the `outpost`, `outpost-agent` and
//! `outpost-console` binaries, `tauri-driver` and `WebKitWebDriver`, and a display: `cargo
//! xtask test` runs it (`console e2e` check) under `xvfb-run`. Hence `#[ignore]` in a plain
//! `cargo test`; run it alone with `cargo xtask console-e2e`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const PASSPHRASE: &str = "e2e-passphrase";
const DEVICES: [(&str, &str, &str, bool); 4] = [
    ("berlin-1", "berlin", "rpi4", false),
    ("berlin-2", "berlin", "rpi4", true),
    ("munich-1", "munich", "jetson", false),
    ("munich-2", "munich", "rpi4", false),
];

fn repo() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    repo.canonicalize().unwrap_or(repo)
}

fn target_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let path = dir.join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo xtask console-e2e does)",
        path.display()
    );
    path
}

fn show(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    outpost_tests::wait::until_some(timeout, what, &mut probe)
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The control site: CLI material, the server, its admin token.
struct Site {
    /// `target/console-e2e/`, wiped at the start and kept afterwards (logs of the server and
    /// agents for a failure).
    dir: PathBuf,
    api_port: u16,
    broker_port: u16,
    token: String,
    _server: Option<Running>,
}

impl Site {
    fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(target_binary("outpost"));
        command
            .args(args)
            .current_dir(&self.dir)
            .env("OUTPOST_PASSPHRASE", PASSPHRASE)
            .env_remove("OUTPOST_SERVER")
            .env_remove("OUTPOST_TOKEN");
        // Before the first admin exists the CLI works on the data directory itself.
        if !self.token.is_empty() {
            command.env("OUTPOST_SERVER", self.url()).env("OUTPOST_TOKEN", &self.token);
        }
        let output = command.output().expect("run outpost");
        assert!(output.status.success(), "outpost {args:?}: {}", show(&output));
        output
    }

    /// The server's configuration file: ports, trust root, small ingest buckets (so the drift
    /// heatmap has columns within a minute) and a fast drift monitor and rollout driver.
    fn write_config(&self) {
        let text = format!(
            "data_dir = {data:?}\n[api]\nlisten = \"127.0.0.1:{api}\"\n[broker]\n\
             embedded_listen = \"127.0.0.1:{broker}\"\n[trust]\nroot = {root:?}\n[ingest]\n\
             bucket_seconds = 5\n[drift]\nevaluate_interval_seconds = 0.5\n[rollouts]\n\
             tick_seconds = 0.5\n",
            data = self.path("data").display().to_string(),
            api = self.api_port,
            broker = self.broker_port,
            root = self.path("root.json").display().to_string(),
        );
        std::fs::write(self.path("control.toml"), text).expect("control.toml");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn get(&self, path: &str) -> Value {
        let mut response = ureq::get(&format!("{}{path}", self.url()))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        response.body_mut().read_json().expect("JSON")
    }

    fn bundle(&self, version: &str) {
        let model = |file: &str| repo().join("tests/models").join(file).display().to_string();
        let out = format!("fraud-{version}.bundle");
        self.cli(&[
            "bundle",
            "create",
            "--model",
            &model("mlp_classifier.onnx"),
            "--name",
            "fraud",
            "--version",
            version,
            "--baseline",
            &model("mlp_classifier.baseline.csv"),
            "--golden",
            &model("mlp_classifier.golden.json"),
            "--lineage",
            &model("mlp_classifier.lineage.json"),
            "--key",
            "keys/ci.key.json",
            "--out",
            &out,
        ]);
    }

    fn start() -> Site {
        let free = || outpost_tests::broker::free_port().expect("free port");
        let mut site = Site {
            dir: {
                let dir = repo().join("target/console-e2e");
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("run dir");
                dir
            },
            api_port: free(),
            broker_port: free(),
            token: String::new(),
            _server: None,
        };
        for (name, role) in [("root1", "root"), ("alice", "approver"), ("ci", "publisher")] {
            site.cli(&["keys", "generate", "--name", name, "--role", role, "--out", "keys"]);
        }
        site.cli(&[
            "trust",
            "init",
            "--root",
            "keys/root1.pub.json",
            "--root-threshold",
            "1",
            "--approver",
            "keys/alice.pub.json",
            "--approvals",
            "1",
            "--publisher",
            "keys/ci.pub.json",
            "--expires-in",
            "30",
            "--sign",
            "keys/root1.key.json",
            "--out",
            "root.json",
        ]);
        site.bundle("1.0.0");
        site.bundle("2.0.0");
        let log = std::fs::File::create(site.path("serve.log")).expect("log file");
        site.write_config();
        let child = Command::new(target_binary("outpost"))
            .args(["serve", "--config", "control.toml"])
            .current_dir(&site.dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("outpost serve starts");
        site._server = Some(Running(child));
        let health = format!("{}/health", site.url());
        wait_until("the server answers /health", TIMEOUT, || ureq::get(&health).call().ok());
        let added = site.cli(&[
            "users",
            "add",
            "operator-olga",
            "--role",
            "admin",
            "--config",
            "control.toml",
        ]);
        site.token = String::from_utf8_lossy(&added.stdout)
            .lines()
            .map(str::trim)
            .rfind(|line| !line.is_empty())
            .expect("a token")
            .to_string();
        site.cli(&["model", "push", "fraud-1.0.0.bundle"]);
        site.cli(&["model", "push", "fraud-2.0.0.bundle"]);
        site
    }
}

struct Agent {
    _process: Running,
    port: u16,
}

fn start_agent(site: &Site, id: &str, city: &str, hw: &str) -> Agent {
    let dir = site.path(id);
    std::fs::create_dir_all(&dir).expect("agent dir");
    let port = outpost_tests::broker::free_port().expect("port");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\n\n[device]\nid = \"{id}\"\n\n[device.tags]\nsite = \"{city}\"\n\
             hw = \"{hw}\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[stats]\nperiod_seconds = 1.0\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {broker}\n",
            data = dir.join("data").display(),
            broker = site.broker_port,
        ),
    )
    .expect("agent config");
    let agent = target_binary("outpost-agent");
    let output = Command::new(&agent)
        .args(["provision", "--config"])
        .arg(&config)
        .arg("--trust")
        .arg(site.path("root.json"))
        .arg("--bundle")
        .arg(site.path("fraud-1.0.0.bundle"))
        .output()
        .expect("provision");
    assert!(output.status.success(), "provision {id}: {}", show(&output));
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    let child = Command::new(&agent)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("agent starts");
    let ready = format!("http://127.0.0.1:{port}/v2/health/ready");
    wait_until(&format!("{id} ready"), TIMEOUT, || ureq::get(&ready).call().ok());
    Agent { _process: Running(child), port }
}

fn rows(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("tests/models").join(file)).expect("rows");
    text.lines().skip(1).map(str::to_string).collect()
}

fn infer(port: u16, row: &str) -> bool {
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"features\",\"datatype\":\"FP32\",\"shape\":[1,8],\"data\":[{row}]}}]}}"
    );
    ureq::post(&format!("http://127.0.0.1:{port}/v2/models/fraud/infer"))
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .is_ok_and(|r| r.status() == 200)
}

/// A W3C WebDriver session through tauri-driver.
struct Driver {
    base: String,
    session: String,
    _driver: Running,
}

fn tauri_driver() -> PathBuf {
    if let Some(path) = std::env::var_os("TAURI_DRIVER") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let path = home.join("bin").join("tauri-driver");
    if path.is_file() { path } else { PathBuf::from("tauri-driver") }
}

impl Driver {
    fn start(app: &Path, home: &Path) -> Driver {
        std::fs::create_dir_all(home).expect("console home");
        let port = outpost_tests::broker::free_port().expect("port");
        let native = outpost_tests::broker::free_port().expect("port");
        let child = Command::new(tauri_driver())
            .args(["--port", &port.to_string(), "--native-port", &native.to_string()])
            // The console's settings and local data stay in the test's folder.
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .env_remove("OUTPOST_CONSOLE_URL")
            .env_remove("OUTPOST_CONSOLE_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join("tauri-driver.log")).expect("driver log"))
            .spawn()
            .expect("tauri-driver starts (cargo install tauri-driver@2.1.0 --locked)");
        let process = Running(child);
        let base = format!("http://127.0.0.1:{port}");
        wait_until("tauri-driver listens", TIMEOUT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let caps =
            json!({"capabilities": {"alwaysMatch": {"tauri:options": {"application": app}}}});
        // tauri-driver accepts connections before WebKitWebDriver behind it does: retry.
        let session = wait_until("a WebDriver session", TIMEOUT, || {
            let response = ureq::post(&format!("{base}/session")).send_json(&caps).ok()?;
            let answer: Value = response.into_body().read_json().ok()?;
            answer["value"]["sessionId"].as_str().map(str::to_string)
        });
        Driver { base, session, _driver: process }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn script(&self, script: &str, args: Value) -> Value {
        post(&self.url("/execute/sync"), &json!({"script": script, "args": args}))["value"].clone()
    }

    /// Waits until `probe` answers; on a timeout saves what the window shows (in
    /// `target/console-e2e-failure.png`, with the page text) and fails naming `what`.
    fn wait<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        match outpost_tests::wait::try_until_some(TIMEOUT, what, &mut probe) {
            Ok(value) => value,
            Err(timed_out) => {
                let text = self.script("return document.body.innerText", json!([]));
                let _ = self.save_screenshot(&repo().join("target/console-e2e-failure.png"));
                panic!("{timed_out}; the window shows:\n{}", text.as_str().unwrap_or_default());
            }
        }
    }

    /// Waits until `css` matches an element whose text contains `text`; returns its text.
    fn wait_text(&self, css: &str, text: &str) -> String {
        self.wait(&format!("`{css}` showing `{text}`"), || {
            let found = self.script(
                "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText).join('\\n')",
                json!([css]),
            );
            found.as_str().filter(|t| t.contains(text)).map(str::to_string)
        })
    }

    fn wait_for(&self, css: &str) {
        self.wait(&format!("`{css}` present"), || {
            self.script("return !!document.querySelector(arguments[0])", json!([css]))
                .as_bool()
                .filter(|found| *found)
        });
    }

    fn element(&self, css: &str) -> String {
        self.wait_for(css);
        let answer = post(&self.url("/element"), &json!({"using": "css selector", "value": css}));
        answer["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {answer}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        post(&self.url(&format!("/element/{id}/click")), &json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        post(&self.url(&format!("/element/{id}/clear")), &json!({}));
        // Clearing fires no `input` event; the page's bindings must see the empty value.
        self.script(
            "document.querySelector(arguments[0]).dispatchEvent(new Event('input', {bubbles: true}))",
            json!([css]),
        );
        if !text.is_empty() {
            post(&self.url(&format!("/element/{id}/value")), &json!({"text": text}));
        }
    }

    /// Sets a `<select>` by the visible text of an option and tells Svelte. Options load
    /// asynchronously (device lists, bundles), so this waits for the option to exist.
    fn select(&self, css: &str, option_text: &str) {
        self.wait(&format!("option `{option_text}` in `{css}`"), || {
            self.script(
                "const s = document.querySelector(arguments[0]); if (!s) return false; \
                 const o = Array.from(s.options).find(o => o.text.includes(arguments[1])); \
                 if (!o) return false; s.value = o.value; s.selectedIndex = o.index; \
                 s.dispatchEvent(new Event('change', {bubbles: true})); return true;",
                json!([css, option_text]),
            )
            .as_bool()
            .filter(|done| *done)
        });
    }

    fn go(&self, hash: &str) {
        self.script("location.hash = arguments[0]", json!([hash]));
    }

    fn save_screenshot(&self, path: &Path) -> Result<(), String> {
        // Let charts finish their layout before the picture.
        self.script(
            "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))",
            json!([]),
        );
        let mut response = ureq::get(&self.url("/screenshot")).call().map_err(|e| e.to_string())?;
        let answer: Value = response.body_mut().read_json().map_err(|e| e.to_string())?;
        let png = answer["value"].as_str().ok_or("no screenshot data")?;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png).map_err(|e| e.to_string())?;
        if !bytes.starts_with(b"\x89PNG") {
            return Err("the screenshot is not a PNG".into());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, bytes).map_err(|e| e.to_string())
    }

    fn screenshot(&self, name: &str) {
        let path = repo().join("docs/screenshots").join(format!("{name}.png"));
        self.save_screenshot(&path).unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        // SIGTERM first: tauri-driver then stops the WebKitWebDriver it started.
        let pid = self._driver.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self._driver.0.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn post(url: &str, body: &Value) -> Value {
    let mut response = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    let value: Value = response.body_mut().read_json().unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url} {body}: {status} {value}");
    value
}

#[test]
#[ignore = "needs a display, tauri-driver and the built console: cargo xtask console-e2e"]
fn the_console_drives_a_real_fleet() {
    let site = Site::start();
    let agents: Vec<Agent> =
        DEVICES.iter().map(|(id, city, hw, _)| start_agent(&site, id, city, hw)).collect();
    let (baseline, shifted) =
        (rows("mlp_classifier.baseline.csv"), rows("mlp_classifier.shifted.csv"));
    // Traffic in the background for the whole run: the drift monitor and the rollout gates
    // judge real windows.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let targets: Vec<(u16, bool)> =
            agents.iter().zip(DEVICES).map(|(a, (_, _, _, s))| (a.port, s)).collect();
        std::thread::spawn(move || {
            let mut index = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (port, shifted_data) in &targets {
                    let rows = if *shifted_data { &shifted } else { &baseline };
                    infer(*port, &rows[index % rows.len()]);
                }
                index += 1;
                if index % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    wait_until("every device online", TIMEOUT, || {
        let devices = site.get("/v1/devices?online=true");
        (devices["devices"].as_array().map_or(0, Vec::len) == DEVICES.len()).then_some(())
    });
    wait_until("the drift monitor opens an alert for berlin-2", TIMEOUT, || {
        let alerts = site.get("/v1/drift/alerts?state=open");
        alerts["alerts"]
            .as_array()
            .and_then(|list| list.iter().find(|a| a.to_string().contains("berlin-2")).cloned())
    });

    let home = site.path("console-home");
    let driver = Driver::start(&target_binary("outpost-console"), &home);

    // Connect.
    driver.wait_text("h2", "Connect");
    driver.type_into("input[name=url]", &site.url());
    driver.type_into("input[name=token]", &site.token);
    driver.screenshot("connect");
    driver.click("form[aria-labelledby=remote-title] button[type=submit]");
    driver.wait_text("[data-testid=session]", "operator-olga (admin)");

    // Fleet.
    driver.wait_text("[data-testid=fleet-count]", "4 of 4 devices · 4 online");
    driver.wait_text(".fleet-table", "berlin-2");
    driver.wait_text(".cohorts", "berlin");
    driver.screenshot("fleet");
    driver.type_into(".filters input[placeholder^='site=']", "site=munich");
    driver.wait_text("[data-testid=fleet-count]", "2 of 4 devices");
    driver.type_into(".filters input[placeholder^='site=']", "");

    // Device.
    driver.click("a[data-device=berlin-2]");
    driver.wait_text("h2", "berlin-2");
    driver.wait_for(".chart canvas");
    driver.screenshot("device");

    // Models.
    driver.go("#/models/fraud");
    driver.wait_text("[data-testid=verification]", "Verified");
    driver.wait_text(".profile", "f2");
    driver.screenshot("models");

    // Drift: the alert of the shifted device, acknowledged.
    driver.go("#/drift");
    driver.wait_text("[data-testid=drift-verdict]", "");
    driver.wait_for(".heatmap .cell");
    driver.select("select[name=scope]", "berlin-2");
    driver.wait_text("[data-testid=drift-verdict]", "alert");
    driver.wait_for(".heatmap .cell.alert");
    driver.wait_text("[data-testid=drift-alerts]", "berlin-2");
    driver.screenshot("drift");
    let alert_id = driver
        .script(
            "const row = Array.from(document.querySelectorAll('[data-alert]')).find(r => r.innerText.includes('berlin-2')); return row ? row.dataset.alert : null",
            json!([]),
        )
        .as_str()
        .expect("an alert row for berlin-2")
        .to_string();
    driver.click(&format!("tr[data-alert='{alert_id}'] button[data-action=acknowledge]"));
    wait_until("the alert is acknowledged on the server", TIMEOUT, || {
        let alerts = site.get("/v1/drift/alerts?state=all");
        alerts["alerts"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|a| {
                        a["id"].as_i64().map(|id| id.to_string()).as_deref()
                            == Some(alert_id.as_str())
                    })
                    .cloned()
            })
            .filter(|a| a["review"].as_str().is_some_and(|r| r.starts_with("acknowledged")))
    });

    // Rollouts: the wizard, approval by signing, start, progress.
    driver.go("#/rollouts");
    driver.click("[data-testid=new-rollout]");
    driver.select("select[name=bundle]", "fraud@2.0.0");
    driver.select("select[name=fallback]", "fraud@1.0.0");
    driver.type_into("input[name=id]", "fraud-2-0-0");
    driver.type_into("input[name=health_watch]", "2");
    driver.type_into("input[name=health_requests]", "5");
    // Debug builds on a busy machine: latency is noise, not a regression to judge here.
    driver.type_into("input[name=health_p95]", "1000");
    driver.type_into("input[name=health_errors]", "1");
    driver.click("[data-testid=wizard-next]");
    driver.select("select[name=on_gate_fail]", "roll back");
    for wave in [3, 2] {
        driver.click(&format!("button[aria-label='remove wave {}']", wave + 1));
    }
    for (wave, size) in [(0, "1"), (1, "100%")] {
        driver.type_into(&format!("input[name=wave-{wave}-size]"), size);
        driver.type_into(&format!("input[name=wave-{wave}-soak]"), "3");
        driver.type_into(&format!("input[name=wave-{wave}-requests]"), "5");
        driver.type_into(&format!("input[name=wave-{wave}-p95]"), "1000");
    }
    driver.screenshot("rollout-wizard");
    driver.click("[data-testid=wizard-next]");
    driver.click("[data-testid=wizard-next]");
    driver.wait_text("[data-testid=rollout-state]", "awaiting approval");
    driver
        .type_into("input[name=key_file]", &site.path("keys/alice.key.json").display().to_string());
    driver.type_into("input[name=passphrase]", PASSPHRASE);
    driver.click("[data-testid=approve]");
    driver.wait_text("[data-testid=approved]", "Signed with alice");
    driver.wait_text("[data-testid=rollout-state]", "approved");
    driver.click("button[data-action=start]");
    driver.click("[data-testid=confirm]");
    driver.wait_text("[data-testid=rollout-state]", "running");
    driver.wait_text("[data-testid=waves]", "1 / 1");
    driver.screenshot("rollouts");
    driver.wait_text("[data-testid=rollout-state]", "completed");
    driver.wait_text("[data-testid=gates]", "pass");
    wait_until("every device runs fraud 2.0.0", TIMEOUT, || {
        let devices = site.get("/v1/devices?model=fraud@2.0.0");
        (devices["devices"].as_array().map_or(0, Vec::len) == DEVICES.len()).then_some(())
    });
    driver.screenshot("rollouts-completed");

    // Audit: the log, an export, its verification.
    driver.go("#/audit");
    driver.wait_text("[data-testid=audit-events]", "rollout.approve");
    let export = site.path("audit-export");
    driver.type_into("input[name=export_dir]", &export.display().to_string());
    driver.click("[data-testid=export]");
    driver.wait_text("[data-testid=exported]", "Exported");
    driver.click("[data-testid=verify]");
    driver.wait_text("[data-testid=verdict]", "✔ VERIFIED");
    driver.script(
        "document.querySelector('[data-testid=verdict]').scrollIntoView({block: 'end'})",
        json!([]),
    );
    driver.screenshot("audit");
    assert!(export.join("records.jsonl").is_file(), "the export wrote its records");

    // The dark theme.
    driver.go("#/fleet");
    driver.click("button[aria-label^='Switch to dark']");
    driver.wait_text("[data-testid=fleet-count]", "4 of 4 devices");
    driver.screenshot("fleet-dark");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = traffic.join();
}
