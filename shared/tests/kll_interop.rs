//! KLL sketches against Apache DataSketches for Python: Python reads the bytes Outpost writes
//! and answers the same quantiles, and Outpost reads the bytes Python writes
//! (`tests/drift/kll_interop.py`, run with the project's venv, where `datasketches` is pinned in
//! `tests/models/requirements.txt`).

use std::path::PathBuf;
use std::process::Command;

use outpost_shared::stats::kll::{KLL_K, Kll};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The project's Python (the venv `cargo xtask test` creates), or `OUTPOST_PYTHON`.
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

/// Deterministic values: two overlapping bumps, enough of them that the sketch compacts.
fn values(n: usize) -> Vec<f64> {
    let mut state = 42u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let bump = if i % 3 == 0 { 4.0 } else { 0.0 };
            // f32-representable, so both sides sketch identical items.
            f64::from(((0..6).map(|_| next()).sum::<f64>() + bump) as f32)
        })
        .collect()
}

#[test]
fn python_datasketches_reads_our_sketch_and_we_read_theirs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = values(100_000);
    let mut ours = Kll::new();
    data.iter().for_each(|v| ours.observe(*v));
    let sketch_path = dir.path().join("ours.kll");
    std::fs::write(&sketch_path, ours.to_bytes()).expect("write sketch");
    let values_path = dir.path().join("values.txt");
    let text: String = data.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&values_path, text).expect("write values");
    let out_path = dir.path().join("theirs.kll");

    let output = Command::new(python())
        .arg(repo().join("tests/drift/kll_interop.py"))
        .args([&sketch_path, &values_path, &out_path])
        .output()
        .expect("run kll_interop.py");
    assert!(
        output.status.success(),
        "kll_interop.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");

    // Python reads our bytes as the same sketch: same n, k, extremes and quantiles.
    assert_eq!(report["n"], 100_000);
    assert_eq!(report["k"], u64::from(KLL_K));
    let ranks: Vec<f64> = serde_json::from_value(report["ranks"].clone()).expect("ranks");
    let their_view: Vec<f64> =
        serde_json::from_value(report["quantiles"].clone()).expect("quantiles");
    let our_view = ours.quantiles(&ranks).expect("not empty");
    assert_eq!(our_view, their_view, "quantiles of one sketch differ between Rust and Python");
    let extremes = ours.quantiles(&[0.0, 1.0]).expect("not empty");
    assert_eq!(report["min"].as_f64(), Some(extremes[0]));
    assert_eq!(report["max"].as_f64(), Some(extremes[1]));

    // We read Python's bytes: same n, and its quantiles as Python answers them.
    let theirs = Kll::from_bytes(&std::fs::read(&out_path).expect("their sketch"))
        .expect("Python's sketch decodes");
    assert_eq!(theirs.n(), 100_000);
    let their_answers: Vec<f64> =
        serde_json::from_value(report["their_quantiles"].clone()).expect("their quantiles");
    assert_eq!(theirs.quantiles(&ranks).expect("not empty"), their_answers);

    // Both sketches are within the KLL rank error of the exact quantiles.
    let mut sorted = data.clone();
    sorted.sort_by(f64::total_cmp);
    for sketch in [&ours, &theirs] {
        for (rank, q) in ranks.iter().zip(sketch.quantiles(&ranks).expect("not empty")) {
            let true_rank = sorted.partition_point(|v| *v <= q) as f64 / sorted.len() as f64;
            assert!((true_rank - rank).abs() <= sketch.rank_error(), "rank {rank}: {true_rank}");
        }
    }
    // And they merge: Rust sketch + Python sketch.
    let mut merged = ours.clone();
    merged.merge(&theirs).expect("merge");
    assert_eq!(merged.n(), 200_000);
}
