//! The drift benchmark engine, run by `cargo xtask bench drift`: fleet drift of one model
//! version with `--features` input features over `--devices` devices and `--buckets` hourly
//! buckets, computed from stored aggregates in SQLite exactly as `GET /v1/drift` and
//! `GET /v1/drift/overview` compute it.
//!
//! What is stored is what ingest maintains: one cohort `*` aggregate per bucket (every
//! device's windows merged) and, for the last bucket, one aggregate per device. Each device's
//! data is a window of 60 requests over the profile's edges; one device in ten is shifted.
//! Phases, each in a fresh process so its peak RSS is its own:
//!
//! - `fleet`: the fleet's drift over all buckets, per bucket and in total (what a report and a
//!   trend chart need): read the cohort rows, merge, compare each with the profile;
//! - `devices`: the per-device overview of the last bucket: read every device's row, compare
//!   each with the profile, sort by verdict.
//!
//! Prints `bench kind=drift phase=… key=value …` lines; progress goes to stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use outpost_control::fleet_drift;
use outpost_control::store::ingest::{AggregateKind, AggregateWindow};
use outpost_control::store::{Store, StoreOptions};
use outpost_shared::drift::{Thresholds, Verdict};
use outpost_shared::profile::{FeatureProfile, FeatureSource, Profile};
use outpost_shared::stats::quantile_edges;
use outpost_shared::stats::{Histogram, Moments};
use outpost_shared::wire::{Digest, FeatureStats, LatencyHistogram, ModelRef};

const HOUR_MS: i64 = 3_600_000;
const REQUESTS: u64 = 60;
const BINS: usize = 10;

struct Options {
    devices: usize,
    buckets: usize,
    features: usize,
    phase: Option<(String, PathBuf)>,
}

fn parse() -> Result<Options> {
    let mut options = Options { devices: 10_000, buckets: 24, features: 30, phase: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--devices" => options.devices = value()?.parse()?,
            "--buckets" => options.buckets = value()?.parse()?,
            "--features" => options.features = value()?.parse()?,
            "--phase" => {
                let phase = value()?;
                let db = PathBuf::from(value()?);
                options.phase = Some((phase, db));
            }
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(
        options.devices > 0 && options.buckets > 0 && options.features > 0,
        "sizes must be > 0"
    );
    Ok(options)
}

/// A deterministic value in [0, 1) from a counter (no RNG dependency, same data every run).
fn unit(mut x: u64) -> f64 {
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Roughly normal: the sum of four uniforms, centred.
fn normalish(seed: u64) -> f64 {
    (0..4).map(|k| unit(seed.wrapping_mul(4).wrapping_add(k))).sum::<f64>() - 2.0
}

fn profile(features: usize) -> Profile {
    let inputs = (0..features)
        .map(|f| {
            let values: Vec<f64> =
                (0..5000u64).map(|i| normalish(i * 131 + f as u64 * 7919)).collect();
            let edges = quantile_edges(&values, BINS).expect("edges");
            let mut histogram = Histogram::new(edges).expect("edges");
            let mut moments = Moments::default();
            for v in &values {
                histogram.observe(*v);
                moments.observe(*v);
            }
            FeatureProfile {
                name: format!("f{f}"),
                source: FeatureSource::Element { tensor: "features".into(), index: f },
                histogram,
                moments,
                sketch: None,
            }
        })
        .collect();
    Profile { v: 1, reference_count: 5000, inputs, outputs: vec![], classifier: None }
}

fn model() -> ModelRef {
    ModelRef { name: "bench".into(), version: "1".into(), digest: Digest::of(b"bench") }
}

fn window(profile: &Profile, device: usize, bucket: usize) -> AggregateWindow {
    let shift = if device.is_multiple_of(10) { 1.0 } else { 0.0 };
    let inputs = profile
        .inputs
        .iter()
        .enumerate()
        .map(|(f, feature)| {
            let mut histogram = Histogram::new(feature.histogram.edges.clone()).expect("edges");
            let mut moments = Moments::default();
            for r in 0..REQUESTS {
                let seed = ((device * 1_000 + bucket) as u64) * 1_000_003 + r * 97 + f as u64;
                let v = normalish(seed) + if f == 0 { shift } else { 0.0 };
                histogram.observe(v);
                moments.observe(v);
            }
            FeatureStats { name: feature.name.clone(), histogram, moments, kll_sketch: None }
        })
        .collect();
    let mut latency = LatencyHistogram::default();
    for r in 0..REQUESTS {
        latency.observe(500 + r);
    }
    let start_ms = 1_700_000_000_000 + bucket as u64 * HOUR_MS as u64;
    AggregateWindow {
        model: model(),
        windows: 1,
        start_ms,
        end_ms: start_ms + 60_000,
        count: REQUESTS,
        errors: Default::default(),
        latency,
        inputs,
        outputs: vec![],
        classifier: None,
    }
}

async fn store_at(db: &Path) -> Result<Store> {
    Ok(Store::connect(&StoreOptions {
        url: format!("sqlite://{}?mode=rwc", db.display()),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(30),
    })
    .await?)
}

async fn prepare(options: &Options, db: &Path) -> Result<()> {
    let store = store_at(db).await?;
    let profile = profile(options.features);
    let last = options.buckets - 1;
    for bucket in 0..options.buckets {
        let mut fleet: Option<AggregateWindow> = None;
        for device in 0..options.devices {
            let window = window(&profile, device, bucket);
            if bucket == last {
                store
                    .put_aggregate(
                        AggregateKind::Device,
                        &format!("dev-{device:05}"),
                        bucket_start(bucket),
                        HOUR_MS,
                        &window,
                    )
                    .await?;
            }
            match &mut fleet {
                None => fleet = Some(window),
                Some(fleet) => fleet.merge(&window)?,
            }
        }
        let fleet = fleet.context("no devices")?;
        store
            .put_aggregate(AggregateKind::Cohort, "*", bucket_start(bucket), HOUR_MS, &fleet)
            .await?;
        eprintln!("  bucket {}/{} stored", bucket + 1, options.buckets);
    }
    std::fs::write(db.with_extension("profile.json"), serde_json::to_vec(&profile)?)?;
    store.close().await;
    Ok(())
}

fn bucket_start(bucket: usize) -> i64 {
    1_700_000_000_000 + bucket as i64 * HOUR_MS
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()))
        })
        .unwrap_or(0)
}

async fn measure(options: &Options, phase: &str, db: &Path) -> Result<()> {
    let profile: Profile =
        serde_json::from_slice(&std::fs::read(db.with_extension("profile.json"))?)?;
    let store = store_at(db).await?;
    let digest = model().digest.as_str().to_string();
    let thresholds = Thresholds::default();
    let (from, to) = (bucket_start(0), bucket_start(options.buckets));
    let started = Instant::now();
    let (rows, flagged) = match phase {
        "fleet" => {
            let buckets = store.aggregates(AggregateKind::Cohort, &digest, "*", from, to).await?;
            let mut total: Option<AggregateWindow> = None;
            let mut alerting_buckets = 0;
            for bucket in &buckets {
                let drift = fleet_drift::compare(&profile, &bucket.aggregate, &thresholds);
                alerting_buckets += usize::from(drift.verdict() == Verdict::Alert);
                match &mut total {
                    None => total = Some(bucket.aggregate.clone()),
                    Some(total) => total.merge(&bucket.aggregate)?,
                }
            }
            let total = total.context("no buckets")?;
            let drift = fleet_drift::compare(&profile, &total, &thresholds);
            ensure!(drift.inputs.features.len() == options.features, "every feature compared");
            eprintln!(
                "  fleet: {alerting_buckets} alerting buckets, f0 {:?}",
                drift.inputs.features[0].verdict
            );
            (buckets.len(), drift.inputs_at(Verdict::Alert).len())
        }
        "devices" => {
            let last = bucket_start(options.buckets - 1);
            let rows = store.aggregates_of_model(AggregateKind::Device, &digest, last, to).await?;
            eprintln!(
                "  devices: {} rows read in {:.3} s",
                rows.len(),
                started.elapsed().as_secs_f64()
            );
            let mut alerting = 0;
            for row in &rows {
                let drift = fleet_drift::compare(&profile, &row.aggregate, &thresholds);
                alerting += usize::from(drift.verdict() == Verdict::Alert);
            }
            (rows.len(), alerting)
        }
        other => bail!("unknown phase {other}"),
    };
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "bench kind=drift phase={phase} devices={} buckets={} features={} rows={rows} \
         flagged={flagged} seconds={seconds:.4} peak_rss_kb={}",
        options.devices,
        options.buckets,
        options.features,
        peak_rss_kb()
    );
    store.close().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let options = parse()?;
    if let Some((phase, db)) = &options.phase {
        return if phase == "prepare" {
            prepare(&options, db).await
        } else {
            measure(&options, phase, db).await
        };
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("drift.sqlite");
    let me = std::env::current_exe()?;
    let sizes = [
        "--devices".to_string(),
        options.devices.to_string(),
        "--buckets".into(),
        options.buckets.to_string(),
        "--features".into(),
        options.features.to_string(),
    ];
    for phase in ["prepare", "fleet", "devices"] {
        eprintln!("drift benchmark: {phase}");
        let status = Command::new(&me)
            .args(&sizes)
            .arg("--phase")
            .arg(phase)
            .arg(&db)
            .status()
            .with_context(|| format!("running the {phase} phase"))?;
        ensure!(status.success(), "the {phase} phase failed ({status})");
    }
    Ok(())
}
