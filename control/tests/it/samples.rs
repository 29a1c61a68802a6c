//! On-device input sampling end to end: a real Mosquitto, the real server and
//! two real `outpost-agent` processes fed shifted rows until the drift monitor opens an alert
//! for each. `sampler` has `[sampling] enabled = true` (50 rows at most); `quiet` keeps the
//! default (off). After the alert (and a first upload that empties what `sampler` took while
//! the alert opened), `sampler` is sent rows with a unique first value; an
//! operator's `outpost drift samples request` makes it upload a uniform sample of exactly those
//! rows (bounded at 50), which `outpost drift samples get` writes as a CSV equal to rows that
//! were sent, and the device deletes its copy. `quiet` collects nothing and answers with an
//! empty upload marked "sampling disabled". Requests, uploads and reads are audited; an
//! auditor may not read samples.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outpost_control::store::users::UserRole;
use serde_json::Value;

use crate::ingest::api;
use crate::server::{Backend, Fleet, Site, SiteOptions, agent_binary, free_port, show, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The sampler's reservoir bound.
const MAX_ROWS: usize = 50;
/// Rows sent to the sampler once it is collecting.
const SAMPLED_ROWS: usize = 120;
/// First value of the rows sent in alert: far from any generated value, so a row of the CSV
/// is known to be one of them, and which one.
const MARK: f64 = 10_000.0;

fn shifted_rows() -> Vec<Vec<f64>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/models/mlp_classifier.shifted.csv");
    let text = std::fs::read_to_string(path).expect("rows");
    text.lines()
        .skip(1)
        .map(|line| line.split(',').map(|v| v.trim().parse().expect("number")).collect())
        .collect()
}

struct Agent {
    child: Child,
    port: u16,
    data: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(site: &Site, fleet: &Fleet, id: &str, sampling: &str) -> Agent {
    let dir = site.directory.path().join(id);
    std::fs::create_dir_all(&dir).expect("agent dir");
    let port = free_port();
    let data = dir.join("data");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\n\n[device]\nid = \"{id}\"\n\n[api]\nlisten = \
             \"127.0.0.1:{port}\"\n\n[stats]\nperiod_seconds = 1.0\n\n[mqtt]\nhost = \
             \"127.0.0.1\"\nport = {broker}\n\n{sampling}",
            data = data.display(),
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
        .arg(fleet.path("good.bundle"))
        .output()
        .expect("provision");
    assert!(output.status.success(), "provision {id}: {}", show(&output));
    let child = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let agent = Agent { child, port, data };
    let ready = format!("http://127.0.0.1:{port}/v2/health/ready");
    wait_until(&format!("{id} ready"), TIMEOUT, || {
        ureq::get(&ready).call().is_ok_and(|r| r.status() == 200)
    });
    agent
}

fn infer(agent: &Agent, row: &[f64]) {
    let data: Vec<String> = row.iter().map(|v| v.to_string()).collect();
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"features\",\"datatype\":\"FP32\",\"shape\":[1,{}],\
         \"data\":[{}]}}]}}",
        row.len(),
        data.join(",")
    );
    let url = format!("http://127.0.0.1:{}/v2/models/fraud/infer", agent.port);
    let response = ureq::post(&url)
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .expect("inference");
    assert_eq!(response.status(), 200);
}

fn requests(site: &Site, device: &str) -> Vec<Value> {
    let answer =
        api(site).get_json(&format!("/v1/devices/{device}/samples"), &[]).expect("sample list");
    answer["requests"].as_array().cloned().unwrap_or_default()
}

fn audit_count(site: &Site, action: &str, device: &str) -> usize {
    let answer = api(site)
        .get_json(
            "/v1/audit/events",
            &[("action", action.to_string()), ("device", device.to_string())],
        )
        .expect("audit events");
    answer["events"].as_array().map_or(0, Vec::len)
}

fn reservoir(agent: &Agent) -> PathBuf {
    agent.data.join("samples").join("reservoir.json")
}

#[test]
fn input_samples_are_taken_only_when_enabled_and_in_alert_and_uploaded_as_sent() {
    let fleet = Fleet::new();
    let site = Site::start(
        Backend::Sqlite,
        SiteOptions {
            trust_root: Some(fleet.path("root.json")),
            mosquitto: true,
            environment: vec![("OUTPOST__DRIFT__EVALUATE_INTERVAL_SECONDS".into(), "0.2".into())],
            ..Default::default()
        },
    );
    site.outpost_ok(&["model", "push", &fleet.path_text("good.bundle")]);
    let sampling =
        format!("[sampling]\nenabled = true\nmax_rows = {MAX_ROWS}\nflush_seconds = 1\n");
    let sampler = start_agent(&site, &fleet, "sampler", &sampling);
    let quiet = start_agent(&site, &fleet, "quiet", "");

    // Shifted traffic until the drift monitor opens an alert for each device.
    let rows = shifted_rows();
    for row in rows.iter().take(500) {
        infer(&sampler, row);
        infer(&quiet, row);
    }
    wait_until("drift alerts for both devices", TIMEOUT, || {
        let alerts =
            api(&site).get_json("/v1/drift/alerts", &[("state", "open".into())]).expect("alerts");
        ["sampler", "quiet"].iter().all(|device| {
            alerts["alerts"].as_array().is_some_and(|list| {
                list.iter().any(|a| a["scope_kind"] == "device" && a["scope_key"] == *device)
            })
        })
    });

    // The alert may open while the traffic above still flows, so the sampler holds some of
    // those rows: a first upload empties it (and is deleted on the device).
    site.outpost_ok(&["drift", "samples", "request", "--device", "sampler"]);
    wait_until("the first upload", TIMEOUT, || {
        requests(&site, "sampler").first().is_some_and(|r| r["state"] == "complete")
    });
    wait_until("the sampler deleting its first sample", TIMEOUT, || !reservoir(&sampler).exists());

    // In alert: marked rows until the sampler is collecting, then SAMPLED_ROWS more.
    let mut sent: HashMap<u64, Vec<f64>> = HashMap::new();
    let mut next = 0usize;
    let mut send = |agent: &Agent| {
        let mut row = rows[next % rows.len()].clone();
        row[0] = MARK + next as f64;
        infer(agent, &row);
        sent.insert(next as u64, row);
        next += 1;
    };
    wait_until("the sampler collecting", TIMEOUT, || {
        send(&sampler);
        infer(&quiet, &rows[0]);
        reservoir(&sampler).exists()
    });
    for _ in 0..SAMPLED_ROWS {
        send(&sampler);
    }

    // An operator requests both uploads.
    for device in ["sampler", "quiet"] {
        let answer = site.outpost_ok(&["drift", "samples", "request", "--device", device]);
        assert!(answer.contains(&format!("from {device}")), "{answer}");
    }
    for device in ["sampler", "quiet"] {
        wait_until(&format!("{device}'s upload"), TIMEOUT, || {
            requests(&site, device).first().is_some_and(|r| r["state"] == "complete")
        });
    }

    let upload = &requests(&site, "sampler")[0];
    assert_eq!(upload["enabled"], true, "{upload}");
    assert!(upload["seen"].as_u64() >= Some(SAMPLED_ROWS as u64), "{upload}");
    let out = site.directory.path().join("sampler.csv");
    let wrote = site.outpost_ok(&[
        "drift",
        "samples",
        "get",
        "--device",
        "sampler",
        "--out",
        &out.display().to_string(),
    ]);
    assert!(wrote.contains(&format!("wrote {MAX_ROWS} rows")), "{wrote}");
    let csv = std::fs::read_to_string(&out).expect("csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let expected: Vec<String> = (0..8).map(|i| format!("features[{i}]")).collect();
    assert_eq!(header, expected, "{csv}");
    let mut seen_indices = std::collections::BTreeSet::new();
    for line in lines {
        let values: Vec<f64> = line.split(',').map(|v| v.parse().expect("number")).collect();
        assert!(values[0] >= MARK, "a row from before the alert was sampled: {line}");
        let index = (values[0] - MARK).round() as u64;
        let original = sent.get(&index).unwrap_or_else(|| panic!("row {index} was never sent"));
        for (got, want) in values.iter().zip(original) {
            // The agent reads FP32 inputs; compare at f32 precision.
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{line} vs {original:?}");
        }
        assert!(seen_indices.insert(index), "row {index} twice in a sample without replacement");
    }
    assert_eq!(seen_indices.len(), MAX_ROWS, "the reservoir bound");
    wait_until("the sampler deleting its copy", TIMEOUT, || !reservoir(&sampler).exists());

    // Sampling off by default: nothing collected, an empty upload that says so.
    let upload = &requests(&site, "quiet")[0];
    assert_eq!(upload["enabled"], false, "{upload}");
    assert!(!quiet.data.join("samples").join("reservoir.json").exists());
    let out = site.directory.path().join("quiet.csv");
    let wrote = site.outpost_ok(&[
        "drift",
        "samples",
        "get",
        "--device",
        "quiet",
        "--out",
        &out.display().to_string(),
    ]);
    assert!(wrote.contains("wrote 0 rows"), "{wrote}");

    // Audited, and not for every role.
    for (device, uploads) in [("sampler", 2), ("quiet", 1)] {
        assert_eq!(audit_count(&site, "drift.samples.request", device), uploads, "{device}");
        assert_eq!(audit_count(&site, "drift.samples.upload", device), uploads, "{device}");
        assert_eq!(audit_count(&site, "drift.samples.read", device), 1, "{device}");
    }
    let auditor = site.token_for("auditor-1", UserRole::Auditor);
    let refused = site.outpost_as(
        &auditor,
        &["drift", "samples", "get", "--device", "sampler", "--out", "/dev/null"],
    );
    assert!(!refused.status.success(), "an auditor read samples: {}", show(&refused));
    assert!(
        show(&refused).contains("403") || show(&refused).contains("forbidden"),
        "{}",
        show(&refused)
    );
}
