//! `outpost drift` against scipy: `tests/drift/scipy_reference.py` writes CSV files with known
//! shifts (mean shift, variance change, new category, none) and what scipy/numpy compute on
//! them; every number `outpost drift --json` prints must agree to 1e-6, shifted columns must
//! alert and unshifted ones must not. Bad input gets a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const TOLERANCE: f64 = 1e-6;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The project's Python (the venv `cargo xtask test` creates, with scipy pinned in
/// tests/models/requirements.txt), or `OUTPOST_PYTHON`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("OUTPOST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = repo().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `cargo xtask test` (it creates the venv) or set OUTPOST_PYTHON",
        venv.display()
    );
    venv
}

fn outpost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost")).args(args).output().expect("run outpost")
}

fn reference_data(dir: &Path) -> Value {
    let status = Command::new(python())
        .arg(repo().join("tests/drift/scipy_reference.py"))
        .arg(dir)
        .status()
        .expect("run the scipy reference script");
    assert!(status.success(), "scipy_reference.py failed");
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn close(what: &str, ours: &Value, theirs: &Value) {
    let (ours, theirs) = (ours.as_f64(), theirs.as_f64());
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        panic!("{what}: ours {ours:?}, scipy {theirs:?}");
    };
    assert!((ours - theirs).abs() <= TOLERANCE, "{what}: ours {ours}, scipy {theirs}");
}

fn same_counts(what: &str, ours: &Value, theirs: &Value) {
    assert_eq!(ours, theirs, "{what}");
}

#[test]
fn drift_metrics_agree_with_scipy_and_verdicts_follow_the_shifts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = reference_data(dir.path());
    let datasets = expected.as_object().expect("datasets");
    assert!(datasets.len() >= 2);
    for (name, dataset) in datasets {
        let reference = dir.path().join(format!("{name}-reference.csv"));
        let current = dir.path().join(format!("{name}-current.csv"));
        let categorical: Vec<&str> = dataset["categorical_flag"]
            .as_array()
            .expect("list")
            .iter()
            .map(|v| v.as_str().expect("name"))
            .collect();
        let mut args = vec![
            "drift".to_string(),
            "--reference".into(),
            reference.display().to_string(),
            "--current".into(),
            current.display().to_string(),
            "--json".into(),
        ];
        if !categorical.is_empty() {
            args.push(format!("--categorical={}", categorical.join(",")));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = outpost(&args);
        assert!(out.status.success(), "outpost drift: {}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        let features = report["features"].as_array().expect("features");
        let columns = dataset["columns"].as_object().expect("columns");
        assert_eq!(features.len(), columns.len(), "one result per column of {name}");
        for (column, want) in columns {
            let got = features
                .iter()
                .find(|f| f["feature"] == column.as_str())
                .unwrap_or_else(|| panic!("no result for {name}/{column}"));
            let what = |metric: &str| format!("{name}/{column} {metric}");
            assert_eq!(got["kind"], want["kind"], "{}", what("kind"));
            assert_eq!(got["reference_count"], want["reference_count"], "{}", what("n_ref"));
            assert_eq!(got["current_count"], want["current_count"], "{}", what("n_cur"));
            same_counts(
                &what("reference counts"),
                &got["reference_counts"],
                &want["reference_counts"],
            );
            same_counts(&what("current counts"), &got["current_counts"], &want["current_counts"]);
            close(&what("PSI"), &got["psi"], &want["psi"]);
            close(&what("Jensen-Shannon"), &got["js_distance"], &want["js_distance"]);
            if want["kind"] == "numeric" {
                let edges = got["bins"]["edges"].as_array().expect("edges");
                let want_edges = want["edges"].as_array().expect("edges");
                assert_eq!(edges.len(), want_edges.len(), "{}", what("edge count"));
                for (ours, theirs) in edges.iter().zip(want_edges) {
                    close(&what("bin edge"), ours, theirs);
                }
                close(&what("KS statistic"), &got["ks"]["statistic"], &want["ks_statistic"]);
                close(&what("KS p-value"), &got["ks"]["p_value"], &want["ks_p_value"]);
                assert_eq!(got["ks"]["method"], "exact", "{}", what("KS method"));
                close(&what("Wasserstein"), &got["wasserstein"], &want["wasserstein"]);
                close(
                    &what("normed Wasserstein"),
                    &got["normed_wasserstein"],
                    &want["normed_wasserstein"],
                );
            } else {
                assert_eq!(got["bins"]["categories"], want["categories"], "{}", what("categories"));
                close(
                    &what("chi-square"),
                    &got["chi_square"]["statistic"],
                    &want["chi_square_statistic"],
                );
                close(
                    &what("chi-square p"),
                    &got["chi_square"]["p_value"],
                    &want["chi_square_p_value"],
                );
                assert_eq!(got["chi_square"]["dof"], want["chi_square_dof"], "{}", what("dof"));
            }
        }
        for (list, alerting) in [("expect_alert", true), ("expect_no_alert", false)] {
            for column in dataset[list].as_array().expect("list") {
                let got = features.iter().find(|f| &f["feature"] == column).expect("feature");
                assert_eq!(
                    got["verdict"] == "alert",
                    alerting,
                    "{name}/{column}: verdict {} ({})",
                    got["verdict"],
                    got["reasons"]
                );
            }
        }
    }
}

#[test]
fn the_table_names_the_drifting_features_and_fail_on_sets_the_exit_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    reference_data(dir.path());
    let reference = dir.path().join("a-reference.csv").display().to_string();
    let current = dir.path().join("a-current.csv").display().to_string();
    let base = ["drift", "--reference", &reference, "--current", &current];

    let out = outpost(&[&base[..], &["--features", "no_shift,mean_shift"]].concat());
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {table}"))
    };
    assert!(row("mean_shift").trim_end().ends_with("alert"), "{table}");
    assert!(!row("no_shift").trim_end().ends_with("alert"), "{table}");
    assert!(table.contains("dataset: alert (1 of 2 judged features alert"), "{table}");
    assert!(table.contains("mean_shift: PSI"), "{table}");

    let out = outpost(&[&base[..], &["--features", "mean_shift", "--fail-on", "alert"]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("drift verdict is alert"));
    let out = outpost(&[&base[..], &["--features", "colour", "--fail-on", "alert"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Per-feature thresholds: a lenient mean_shift no longer alerts.
    let thresholds = dir.path().join("thresholds.toml");
    std::fs::write(
        &thresholds,
        "[features.mean_shift]\npsi_alert = 5.0\npsi_warn = 5.0\njs = 1.0\nnormed_wasserstein = 5.0\n",
    )
    .expect("write thresholds");
    let thresholds = thresholds.display().to_string();
    let out = outpost(
        &[&base[..], &["--features", "mean_shift", "--thresholds", &thresholds, "--json"]].concat(),
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["features"][0]["verdict"], "warn", "only the KS p-value remains");
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let good = write("good.csv", "x,y\n1,a\n2,b\n");
    let cases = [
        (write("missing-column.csv", "x\n1\n"), vec![], "has no column \"y\""),
        (write("ragged.csv", "x,y\n1,a\n2\n"), vec![], "data row 2"),
        (good.clone(), vec!["--bins", "1"], "--bins must be at least 2"),
        (good.clone(), vec!["--categorical", "z"], "--categorical names \"z\""),
        (write("dup.csv", "x,x\n1,2\n"), vec![], "column \"x\" twice"),
    ];
    for (current, extra, message) in cases {
        let out = outpost(
            &[&["drift", "--reference", &good, "--current", &current], &extra[..]].concat(),
        );
        assert_eq!(out.status.code(), Some(1), "{message}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "want {message:?} in: {stderr}");
    }
    let bad_thresholds = write("t.toml", "psi_warn = 0.5\npsi_alert = 0.2\n");
    let out = outpost(&[
        "drift",
        "--reference",
        &good,
        "--current",
        &good,
        "--thresholds",
        &bad_thresholds,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("psi_warn (0.5) is above psi_alert (0.2)")
    );
    let unknown = write("u.toml", "psi_alrt = 0.5\n");
    let out =
        outpost(&["drift", "--reference", &good, "--current", &good, "--thresholds", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("psi_alrt"));
}
