//! Fleet drift end to end with real agents: three `outpost-agent` processes on the server's
//! embedded broker run the pushed bundle; one (in cohort `site=b`) is fed rows whose feature
//! `f2` is shifted by 1.5 standard deviations. Once the windows with that traffic are ingested,
//! `/v1/drift/overview` flags the shifted device and cohort (and only them), `/v1/drift` shows
//! `f2` alerting with a PSI far above every other feature's, and `outpost drift fleet` prints
//! the same. The drift monitor (evaluating every 0.2 s here) opens alerts for exactly that
//! device and cohort after two alerting evaluations, announces them on the alerts topic, and
//! operators acknowledge, annotate and mark them as expected, each recorded in the audit log.
//! `outpost drift report` writes the JSON and HTML report and files a retraining request that
//! arrives on the retrain topic with the drifting feature and the model's lineage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use outpost_control::fleet_drift::{ALERT_TOPIC, RETRAIN_TOPIC};
use outpost_tests::broker::{ClientOptions, TestClient};

use crate::ingest::api;
use crate::server::{Backend, Fleet, Site, SiteOptions, agent_binary, free_port, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Requests per device: every row of the generated CSV files once (500 rows each).
const REQUESTS: usize = 500;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

fn rows(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(models().join(file)).expect("rows");
    text.lines().skip(1).map(str::to_string).collect()
}

/// A running agent, killed on drop.
struct Agent {
    child: Child,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(site: &Site, fleet: &Fleet, id: &str, cohort: &str) -> Agent {
    start_agent_with(site, fleet, id, cohort, "good.bundle")
}

/// An agent provisioned with the fleet's bundle `bundle`.
fn start_agent_with(site: &Site, fleet: &Fleet, id: &str, cohort: &str, bundle: &str) -> Agent {
    let dir = site.directory.path().join(id);
    std::fs::create_dir_all(&dir).expect("agent dir");
    let port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\n\n[device]\nid = \"{id}\"\n\n[device.tags]\nsite = \
             \"{cohort}\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[stats]\n\
             period_seconds = 1.0\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker}\n",
            data = dir.join("data").display(),
            broker = site.server().broker_port,
        ),
    )
    .expect("agent config");
    let output = Command::new(agent_binary())
        .args(["provision", "--config"])
        .arg(&config)
        .arg("--trust")
        .arg(fleet.path("root.json"))
        .arg("--bundle")
        .arg(fleet.path(bundle))
        .output()
        .expect("provision");
    assert!(output.status.success(), "provision {id}: {}", crate::server::show(&output));
    let child = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let agent = Agent { child, port };
    let ready = format!("http://127.0.0.1:{port}/v2/health/ready");
    wait_until(&format!("{id} ready"), TIMEOUT, || {
        ureq::get(&ready).call().is_ok_and(|r| r.status() == 200)
    });
    agent
}

fn infer(agent: &Agent, row: &str) {
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"features\",\"datatype\":\"FP32\",\"shape\":[1,8],\
         \"data\":[{row}]}}]}}"
    );
    let url = format!("http://127.0.0.1:{}/v2/models/fraud/infer", agent.port);
    let response = ureq::post(&url)
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .expect("inference");
    assert_eq!(response.status(), 200);
}

fn requests_ingested(site: &Site, digest: &str, device: &str) -> u64 {
    let answer = api(site)
        .get_json("/v1/aggregates", &[("model", digest.to_string()), ("device", device.into())])
        .expect("aggregates");
    answer["total"]["count"].as_u64().unwrap_or(0)
}

fn entry<'a>(overview: &'a Value, key: &str) -> &'a Value {
    overview["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no entry {key}: {overview}"))
}

#[test]
fn shifted_devices_and_their_cohort_are_flagged_and_the_rest_are_not() {
    let fleet = Fleet::new();
    let site = Site::start(
        Backend::Sqlite,
        SiteOptions {
            trust_root: Some(fleet.path("root.json")),
            environment: vec![("OUTPOST__DRIFT__EVALUATE_INTERVAL_SECONDS".into(), "0.2".into())],
            ..Default::default()
        },
    );
    let mut alert_listener = site
        .runtime
        .block_on(TestClient::connect(
            ClientOptions::local(site.server().broker_port, "alert-listener"),
            TIMEOUT,
        ))
        .expect("listener connects");
    site.runtime.block_on(alert_listener.subscribe(&[ALERT_TOPIC, RETRAIN_TOPIC]));
    site.outpost_ok(&["model", "push", &fleet.path_text("good.bundle")]);
    let digest =
        outpost_shared::sha256_digest(&std::fs::read(fleet.path("good.bundle")).expect("bundle"));

    let devices = [("calm-1", "a", false), ("calm-2", "a", false), ("shifted-1", "b", true)];
    let agents: Vec<Agent> =
        devices.iter().map(|(id, cohort, _)| start_agent(&site, &fleet, id, cohort)).collect();
    let (baseline, shifted) =
        (rows("mlp_classifier.baseline.csv"), rows("mlp_classifier.shifted.csv"));
    for ((_, _, drifting), agent) in devices.iter().zip(&agents) {
        let rows = if *drifting { &shifted } else { &baseline };
        assert!(rows.len() >= REQUESTS, "the generated CSV has {} rows", rows.len());
        for row in rows.iter().take(REQUESTS) {
            infer(agent, row);
        }
    }
    // The traffic is in the windows of the next period or two (1 s each); wait until the
    // server has ingested all of it.
    for (id, _, _) in &devices {
        wait_until(&format!("{id}'s requests ingested"), TIMEOUT, || {
            requests_ingested(&site, &digest, id) >= REQUESTS as u64
        });
    }

    let overview =
        api(&site).get_json("/v1/drift/overview", &[("model", digest.clone())]).expect("overview");
    assert_eq!(entry(&overview, "shifted-1")["verdict"], "alert", "{overview}");
    let alerting = entry(&overview, "shifted-1")["alerting_inputs"].as_array().expect("list");
    assert!(alerting.contains(&Value::from("f2")), "{overview}");
    for calm in ["calm-1", "calm-2"] {
        assert_ne!(entry(&overview, calm)["verdict"], "alert", "{overview}");
        assert_eq!(entry(&overview, calm)["alerting_inputs"], serde_json::json!([]), "{overview}");
        assert_eq!(entry(&overview, calm)["alerting_outputs"], serde_json::json!([]), "{overview}");
    }
    assert_eq!(overview["entries"][0]["key"], "shifted-1", "worst first: {overview}");

    let cohorts = api(&site)
        .get_json("/v1/drift/overview", &[("model", digest.clone()), ("by", "cohort".into())])
        .expect("cohorts");
    assert_eq!(entry(&cohorts, "site=b")["verdict"], "alert", "{cohorts}");
    assert_ne!(entry(&cohorts, "site=a")["verdict"], "alert", "{cohorts}");

    let detail = api(&site)
        .get_json("/v1/drift", &[("model", digest.clone()), ("device", "shifted-1".into())])
        .expect("drift");
    let inputs = detail["total"]["inputs"]["features"].as_array().expect("features");
    assert_eq!(inputs.len(), 8, "every input feature is compared: {detail}");
    // f2 moved by 1.5 standard deviations; the other features differ by sampling noise only
    // (500 rows drawn with another seed), an order of magnitude less.
    let psi = |name: &str| {
        let feature = inputs.iter().find(|f| f["feature"] == name).expect("feature");
        feature["psi"].as_f64().expect("psi")
    };
    let f2 = inputs.iter().find(|f| f["feature"] == "f2").expect("f2");
    assert_eq!(f2["verdict"], "alert", "{f2}");
    assert!(psi("f2") >= 1.0, "f2 PSI {}", psi("f2"));
    for other in ["f0", "f1", "f3", "f4", "f5", "f6", "f7"] {
        assert!(psi(other) * 5.0 < psi("f2"), "{other} PSI {} vs f2 {}", psi(other), psi("f2"));
    }
    // Seen through the mean (a lower bound of the normed Wasserstein distance).
    let shift = f2["normed_mean_shift"].as_f64().expect("shift");
    assert!((1.2..1.8).contains(&shift), "f2 shift {shift}");
    assert!(detail["buckets"].as_array().is_some_and(|b| !b.is_empty()));
    assert_eq!(detail["total"]["not_comparable"], serde_json::json!([]));

    // The CLI shows the same.
    let table = site.outpost_ok(&["drift", "fleet", "--model", "fraud@1.0.0"]);
    let line = table.lines().find(|l| l.starts_with("shifted-1")).expect("row");
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[3], "alert", "{table}");
    assert!(columns[4].split(',').any(|f| f == "f2"), "{table}");
    let refused = site.outpost_refused(&[
        "drift",
        "fleet",
        "--model",
        "fraud@1.0.0",
        "--cohort",
        "site=b",
        "--fail-on",
        "alert",
    ]);
    assert!(refused.contains("drift verdict alert"), "{refused}");
    let unknown = site.outpost_refused(&["drift", "fleet", "--model", "fraud@9.9.9"]);
    assert!(unknown.contains("9.9.9"), "{unknown}");

    // The drift monitor opens alerts for the shifted device and cohort, and only them.
    let open_alerts =
        || api(&site).get_json("/v1/drift/alerts", &[("state", "open".into())]).expect("alerts");
    let has_alert = |alerts: &Value, kind: &str, key: &str| {
        alerts["alerts"].as_array().is_some_and(|list| {
            list.iter()
                .any(|a| a["scope_kind"] == kind && a["scope_key"] == key && a["feature"] == "f2")
        })
    };
    wait_until("drift alerts for shifted-1 and site=b", TIMEOUT, || {
        let alerts = open_alerts();
        has_alert(&alerts, "device", "shifted-1") && has_alert(&alerts, "cohort", "site=b")
    });
    let alerts = open_alerts();
    for alert in alerts["alerts"].as_array().expect("alerts") {
        let key = alert["scope_key"].as_str().expect("key");
        assert!(
            ["shifted-1", "site=b", "*"].contains(&key),
            "only the shifted device, its cohort and the whole fleet may alert: {alert}"
        );
        assert_eq!(alert["review"], "new");
        assert_eq!(alert["closed_ms"], Value::Null);
    }
    let announced = site.runtime.block_on(alert_listener.expect_on(
        ALERT_TOPIC,
        TIMEOUT,
        "a drift alert announcement",
    ));
    let event: Value = serde_json::from_slice(&announced.payload).expect("alert event JSON");
    assert_eq!(event["event"], "opened", "{event}");
    assert!(event["alert"]["id"].as_i64().is_some(), "{event}");

    // Operators review it; each step is in the audit log with the user.
    let id = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["scope_key"] == "shifted-1" && a["feature"] == "f2")
        .and_then(|a| a["id"].as_i64())
        .expect("alert id")
        .to_string();
    let acked = site.outpost_ok(&["drift", "ack", &id, "--note", "looking into the sensor"]);
    assert!(acked.contains("acknowledged"), "{acked}");
    site.outpost_ok(&["drift", "annotate", &id, "--note", "sensor recalibrated on site"]);
    let expected = site.outpost_ok(&["drift", "expected", &id]);
    assert!(expected.contains("expected"), "{expected}");
    let listed = site.outpost_json(&["drift", "alerts", "--state", "all"]);
    let alert = listed["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["id"].as_i64().is_some_and(|n| n.to_string() == id))
        .expect("the reviewed alert")
        .clone();
    assert_eq!(alert["review"], "expected", "{alert}");
    assert_eq!(alert["reviewed_by"], "root-admin", "{alert}");
    let notes: Vec<&str> = alert["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(|n| n["text"].as_str())
        .collect();
    assert_eq!(notes, ["looking into the sensor", "sensor recalibrated on site"]);
    let auditor = site.token_for("carol", outpost_control::store::users::UserRole::Auditor);
    let denied = site.outpost_as(&auditor, &["drift", "ack", &id]);
    assert_eq!(denied.status.code(), Some(1), "an auditor may not review alerts");
    let audit = api(&site).get_json("/v1/audit/events", &[]).expect("audit");
    let opened = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| {
            e["action"] == "drift.alert.open"
                && e["subject"].as_str().is_some_and(|s| s.contains("device shifted-1 feature f2"))
        })
        .expect("the opening of shifted-1's f2 alert is audited");
    assert!(opened["reason"].as_str().is_some_and(|r| r.contains("PSI")), "{opened}");
    let actions: Vec<(String, String)> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["actor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (action, actor) in [
        ("drift.alert.open", "control"),
        ("drift.alert.ack", "root-admin"),
        ("drift.alert.annotate", "root-admin"),
        ("drift.alert.expected", "root-admin"),
    ] {
        assert!(
            actions.iter().any(|(a, b)| a == action && b == actor),
            "{action} by {actor} in the audit log: {actions:?}"
        );
    }

    // A report for the period, and a retraining request a pipeline receives.
    let out = site.directory.path().join("report");
    let printed = site.outpost_ok(&[
        "drift",
        "report",
        "--model",
        "fraud@1.0.0",
        "--out",
        &out.display().to_string(),
        "--request-retrain",
        "--note",
        "f2 moved at site b",
    ]);
    assert!(printed.contains("verdict alert"), "{printed}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("drift-report.json")).expect("json"))
            .expect("report JSON");
    // A third of the fleet moved on one feature of eight: f2 alerts for the whole fleet (the
    // verdict), while the dataset verdict of the inputs (one alerting feature in eight, below
    // the drift share) only warns.
    assert_eq!(report["drift"]["verdict"], "alert", "{report}");
    assert_eq!(report["drift"]["total"]["inputs"]["verdict"], "warn", "{report}");
    let fleet_f2 = report["drift"]["total"]["inputs"]["features"]
        .as_array()
        .expect("features")
        .iter()
        .find(|f| f["feature"] == "f2")
        .expect("f2")
        .clone();
    assert_eq!(fleet_f2["verdict"], "alert", "{fleet_f2}");
    let html = std::fs::read_to_string(out.join("drift-report.html")).expect("html");
    assert!(html.contains("id=\"inputs-f2\""), "a section per feature");
    assert_eq!(html.matches("<svg").count(), 2 * (8 + 4), "two charts per input and output");
    let message = site.runtime.block_on(alert_listener.expect_on(
        RETRAIN_TOPIC,
        TIMEOUT,
        "the retraining request",
    ));
    let request: Value = serde_json::from_slice(&message.payload).expect("request JSON");
    assert_eq!(request["event"], "retrain_requested", "{request}");
    let body = &request["request"];
    assert_eq!(body["model"]["digest"], digest.as_str(), "{request}");
    assert!(body["alerting"].as_array().is_some_and(|a| a.contains(&Value::from("f2"))));
    assert!(body["lineage"].is_object(), "the lineage a pipeline retrains from: {request}");
    assert_eq!(body["requested_by"], "root-admin");
    assert_eq!(body["note"], "f2 moved at site b");
    let audit = api(&site)
        .get_json("/v1/audit/events", &[("action", "drift.retrain.request".into())])
        .expect("audit");
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(1), "{audit}");
}

/// Creates `out` in the fleet's directory: the fraud model signed by the fleet's publisher, its
/// profile sketching the features `kll` (`outpost bundle create --kll`).
fn create_sketched_bundle(fleet: &Fleet, out: &str, kll: &str) {
    let model = |name: &str| models().join(name).display().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["bundle", "create", "--model"])
        .arg(model("mlp_classifier.onnx"))
        .args(["--name", "fraud", "--version", "1.1.0", "--baseline"])
        .arg(model("mlp_classifier.baseline.csv"))
        .arg("--golden")
        .arg(model("mlp_classifier.golden.json"))
        .arg("--lineage")
        .arg(model("mlp_classifier.lineage.json"))
        .args(["--kll", kll, "--key", "keys/ci.key.json", "--out", out])
        .current_dir(fleet.directory.path())
        .env("OUTPOST_PASSPHRASE", "test-passphrase")
        .output()
        .expect("run outpost");
    assert!(output.status.success(), "bundle create: {}", crate::server::show(&output));
}

/// KLL sketches end to end: agents running a bundle created with `--kll f0,f2` send sketched
/// windows; the server keeps the sketches through ingest, the pending windows and the fold, so
/// `/v1/drift` compares the merged sketches with the profile's: quantiles over every request
/// and a sketch KS that is within its bound of 0 for baseline traffic and large for the device
/// whose `f2` is shifted. The aggregates carry the merged sketch.
#[test]
fn kll_sketches_survive_ingest_and_give_fleet_sketch_drift() {
    let fleet = Fleet::new();
    create_sketched_bundle(&fleet, "kll.bundle", "f0,f2");
    let site = Site::start(
        Backend::Sqlite,
        SiteOptions { trust_root: Some(fleet.path("root.json")), ..Default::default() },
    );
    site.outpost_ok(&["model", "push", &fleet.path_text("kll.bundle")]);
    let digest =
        outpost_shared::sha256_digest(&std::fs::read(fleet.path("kll.bundle")).expect("bundle"));
    let devices = [("calm-k", false), ("shifted-k", true)];
    let agents: Vec<Agent> = devices
        .iter()
        .map(|(id, _)| start_agent_with(&site, &fleet, id, "a", "kll.bundle"))
        .collect();
    let (baseline, shifted) =
        (rows("mlp_classifier.baseline.csv"), rows("mlp_classifier.shifted.csv"));
    for ((_, drifting), agent) in devices.iter().zip(&agents) {
        let rows = if *drifting { &shifted } else { &baseline };
        for row in rows.iter().take(REQUESTS) {
            infer(agent, row);
        }
    }
    for (id, _) in &devices {
        wait_until(&format!("{id}'s requests ingested"), TIMEOUT, || {
            requests_ingested(&site, &digest, id) >= REQUESTS as u64
        });
    }

    let sketches = |device: &str| {
        let detail = api(&site)
            .get_json("/v1/drift", &[("model", digest.clone()), ("device", device.into())])
            .expect("drift");
        let sketches = detail["total"]["sketches"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = sketches.iter().filter_map(|s| s["feature"].as_str()).collect();
        assert_eq!(names, ["f0", "f2"], "the sketched features of {device}: {detail}");
        sketches
    };
    let ks = |sketch: &Value| {
        let ks = &sketch["ks"];
        assert_eq!(ks["current_n"], REQUESTS as u64, "every request is in the sketch: {sketch}");
        (ks["statistic"].as_f64().expect("ks"), ks["error_bound"].as_f64().expect("bound"))
    };
    for sketch in sketches("calm-k") {
        let (statistic, bound) = ks(&sketch);
        // The baseline rows are the profile's own: the exact KS is 0.
        assert!(statistic <= bound, "{sketch}");
        let quantiles = sketch["current_quantiles"].as_array().expect("quantiles");
        assert_eq!(quantiles.len(), 7, "{sketch}");
    }
    let shifted = sketches("shifted-k");
    let (f0, f0_bound) = ks(&shifted[0]);
    let (f2, f2_bound) = ks(&shifted[1]);
    // 1.5 standard deviations apart: an exact KS near 0.55; f0 differs by sampling only.
    assert!(f2 - f2_bound > 0.3, "f2 sketch KS {f2} ± {f2_bound}");
    assert!(f0 < f2 - f2_bound - f0_bound, "f0 sketch KS {f0} against f2 {f2}");
    let median = |side: &str| shifted[1][side][3].as_f64().expect("median");
    assert!(
        (median("current_quantiles") - median("reference_quantiles")).abs() > 0.5,
        "f2 medians {} and {}",
        median("current_quantiles"),
        median("reference_quantiles")
    );

    // The aggregate rows carry the merged sketch of every request of the device.
    let answer = api(&site)
        .get_json("/v1/aggregates", &[("model", digest.clone()), ("device", "shifted-k".into())])
        .expect("aggregates");
    let f2_stats = answer["total"]["inputs"]
        .as_array()
        .and_then(|inputs| inputs.iter().find(|f| f["name"] == "f2"))
        .unwrap_or_else(|| panic!("f2 in {answer}"));
    assert!(f2_stats["kll_sketch"].is_string(), "{f2_stats}");
    assert!(answer["total"]["inputs"][1]["kll_sketch"].is_null(), "f1 is not sketched: {answer}");
}
