//! Fleet drift: merged statistics windows of one model version compared with the baseline
//! profile in its bundle, per feature (inputs), per output and for the predicted classes.
//!
//! Windows bin every feature over the profile's own edges, so PSI, Jensen–Shannon and
//! chi-square computed here are exact for the merged data; the KS statistic is bounded and the
//! normed Wasserstein distance bounded from below (see `docs/drift.md`). Features the profile
//! sketches (KLL) also get quantiles from the merged sketches and a sketch-aware KS statistic
//! with its rank-error bound ([`SketchDrift`]). Pure functions: the API handler
//! ([`crate::api::drift`]) fetches the aggregates and the profile.

use outpost_shared::drift::{self, DatasetDrift, FeatureMetrics, Thresholds, Verdict};
use outpost_shared::profile::Profile;
use outpost_shared::stats::kll::{Kll, SketchKs, sketch_ks};
use serde::{Deserialize, Serialize};

use crate::store::ingest::AggregateWindow;

/// Drift of one merged aggregate against the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowDrift {
    /// Windows and inference requests merged.
    pub windows: u64,
    pub requests: u64,
    /// The model's input features.
    pub inputs: DatasetDrift,
    /// Output distributions and, for classifiers, the predicted classes (`predicted_class`):
    /// prediction drift.
    pub outputs: DatasetDrift,
    /// Features of the window the profile does not have, or whose bins differ from the
    /// profile's (not comparable; named so nothing is dropped silently).
    pub not_comparable: Vec<String>,
    /// Inputs and outputs whose profile and merged windows both carry a KLL sketch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sketches: Vec<SketchDrift>,
}

/// Normalized ranks at which [`SketchDrift`] reports quantiles.
pub const SKETCH_RANKS: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];

/// A feature compared through its KLL sketches: the baseline's and the merged windows'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SketchDrift {
    pub feature: String,
    /// Quantiles at [`SKETCH_RANKS`]; each within `rank_error` (in rank) of the exact one.
    pub reference_quantiles: Vec<f64>,
    pub current_quantiles: Vec<f64>,
    /// The merged windows' sketch: normalized rank error at 99 % confidence.
    pub rank_error: f64,
    /// KS statistic between the two sketches' CDFs and its bound: `|ks.statistic − D| ≤
    /// ks.error_bound` for the exact statistic `D` of the full data.
    pub ks: SketchKs,
}

/// The sketch comparison of one feature; `None` when either side has no sketch or no values.
/// A sketch that does not decode (it was validated when it arrived) is logged and skipped.
fn compare_sketches(
    reference: &outpost_shared::profile::FeatureProfile,
    current: &outpost_shared::wire::FeatureStats,
) -> Option<SketchDrift> {
    let (Some(profile_sketch), Some(bytes)) = (&reference.sketch, &current.kll_sketch) else {
        return None;
    };
    let decoded = profile_sketch.reference().and_then(|r| Ok((r, Kll::from_bytes(bytes)?)));
    let (reference_kll, current_kll) = match decoded {
        Ok(pair) => pair,
        Err(error) => {
            tracing::warn!(feature = %current.name, %error, "KLL sketch skipped");
            return None;
        }
    };
    let ks = sketch_ks(&reference_kll, &current_kll)?;
    Some(SketchDrift {
        feature: current.name.clone(),
        reference_quantiles: reference_kll.quantiles(&SKETCH_RANKS)?,
        current_quantiles: current_kll.quantiles(&SKETCH_RANKS)?,
        rank_error: current_kll.rank_error(),
        ks,
    })
}

impl WindowDrift {
    /// The worst verdict of any input feature or output: a device or cohort with one
    /// alerting feature is flagged. (The dataset verdicts of `inputs` and `outputs` weigh the
    /// share of drifting features instead; both are reported.)
    pub fn verdict(&self) -> Verdict {
        let worst = |dataset: &DatasetDrift| {
            if dataset.judged == 0 {
                Verdict::Insufficient
            } else {
                dataset.features.iter().map(|f| f.verdict).max().unwrap_or(Verdict::Insufficient)
            }
        };
        worst(&self.inputs).max(worst(&self.outputs))
    }

    /// Input features at exactly `level`.
    pub fn inputs_at(&self, level: Verdict) -> Vec<String> {
        at(&self.inputs, level)
    }

    /// Outputs (and `predicted_class`) at exactly `level`.
    pub fn outputs_at(&self, level: Verdict) -> Vec<String> {
        at(&self.outputs, level)
    }
}

fn at(dataset: &DatasetDrift, level: Verdict) -> Vec<String> {
    dataset
        .features
        .iter()
        .filter(|f| f.verdict == level)
        .map(|f| f.metrics.feature.clone())
        .collect()
}

/// The name prediction drift of a classifier is reported under.
pub const PREDICTED_CLASS: &str = "predicted_class";

/// Compares `aggregate` with `profile` feature by feature.
pub fn compare(
    profile: &Profile,
    aggregate: &AggregateWindow,
    thresholds: &Thresholds,
) -> WindowDrift {
    let mut not_comparable = Vec::new();
    let mut sketches = Vec::new();
    let mut side = |baseline: &[outpost_shared::profile::FeatureProfile],
                    current: &[outpost_shared::wire::FeatureStats]|
     -> Vec<FeatureMetrics> {
        let mut out = Vec::new();
        for stats in current {
            let Some(reference) = baseline.iter().find(|b| b.name == stats.name) else {
                not_comparable.push(stats.name.clone());
                continue;
            };
            sketches.extend(compare_sketches(reference, stats));
            match drift::compare_binned(
                &stats.name,
                (&reference.histogram, &reference.moments),
                (&stats.histogram, &stats.moments),
            ) {
                Some(metrics) => out.push(metrics),
                None => not_comparable.push(stats.name.clone()),
            }
        }
        out
    };
    let inputs = side(&profile.inputs, &aggregate.inputs);
    let mut outputs = side(&profile.outputs, &aggregate.outputs);
    if let (Some(baseline), Some(current)) = (&profile.classifier, &aggregate.classifier) {
        match drift::compare_counts(PREDICTED_CLASS, &baseline.class_counts, &current.class_counts)
        {
            Some(metrics) => outputs.push(metrics),
            None => not_comparable.push(PREDICTED_CLASS.to_string()),
        }
    }
    WindowDrift {
        windows: aggregate.windows,
        requests: aggregate.count,
        inputs: DatasetDrift::judge(inputs, thresholds),
        outputs: DatasetDrift::judge(outputs, thresholds),
        not_comparable,
        sketches,
    }
}

/// MQTT topic on which the control announces drift alerts opening and closing, for other
/// systems (paging, ticketing, a training pipeline). QoS 1, not retained.
pub const ALERT_TOPIC: &str = "outpost/v1/alerts/drift";

/// MQTT topic on which retraining requests are announced for training pipelines (QoS 1, not
/// retained; every request is also in the audit log as `drift.retrain.request`).
pub const RETRAIN_TOPIC: &str = "outpost/v1/retrain/requests";

/// Consecutive evaluations of one series (model × device or cohort × feature) that alerted,
/// and that were clear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streaks {
    pub alert: u32,
    pub clear: u32,
}

/// What one evaluation does to a series' alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Stay,
    Open,
    Close,
}

/// Hysteresis: how many alerting evaluations in a row open an alert, and how many clear ones
/// close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub open_after: u32,
    pub close_after: u32,
}

impl Hysteresis {
    /// One evaluation of a series whose alert is `open` (or not) came out as `verdict`.
    ///
    /// An alerting verdict extends the alert streak, an `ok` one the clear streak, and a
    /// warning — the band between — resets both, so a feature hovering around the threshold
    /// neither opens nor closes anything. Too few values (`insufficient`) change nothing: no
    /// data is no evidence either way.
    pub fn step(self, streaks: Streaks, verdict: Verdict, open: bool) -> (Streaks, Transition) {
        let streaks = match verdict {
            Verdict::Alert => Streaks { alert: streaks.alert.saturating_add(1), clear: 0 },
            Verdict::Ok => Streaks { alert: 0, clear: streaks.clear.saturating_add(1) },
            Verdict::Warn => Streaks::default(),
            Verdict::Insufficient => streaks,
        };
        let transition = if !open && streaks.alert >= self.open_after {
            Transition::Open
        } else if open && streaks.clear >= self.close_after {
            Transition::Close
        } else {
            Transition::Stay
        };
        (streaks, transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod sketches {
        use std::collections::BTreeMap;

        use outpost_shared::profile::{FeatureProfile, FeatureSketch, FeatureSource, SketchKind};
        use outpost_shared::stats::kll::KLL_K;
        use outpost_shared::stats::{Histogram, Moments, quantile_edges};
        use outpost_shared::wire::{
            DeviceId, Digest, FeatureStats, LatencyHistogram, ModelRef, ProtocolVersion,
            StatsWindow,
        };

        use super::*;

        /// Deterministic values shaped like a normal distribution around `shift`.
        fn values(n: usize, shift: f64, seed: u64) -> Vec<f64> {
            let mut state = seed;
            let mut next = move || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 53) as f64
            };
            (0..n).map(|_| (0..12).map(|_| next()).sum::<f64>() - 6.0 + shift).collect()
        }

        fn summary(edges: &[f64], values: &[f64]) -> (Histogram, Moments, Kll) {
            let mut histogram = Histogram::new(edges.to_vec()).expect("edges");
            let mut moments = Moments::default();
            let mut kll = Kll::new();
            for v in values {
                histogram.observe(*v);
                moments.observe(*v);
                kll.observe(*v);
            }
            (histogram, moments, kll)
        }

        fn window(device: &str, edges: &[f64], values: &[f64]) -> StatsWindow {
            let (histogram, moments, kll) = summary(edges, values);
            let mut latency = LatencyHistogram::default();
            values.iter().for_each(|_| latency.observe(100));
            StatsWindow {
                v: ProtocolVersion,
                device: DeviceId::new(device).expect("id"),
                model: ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"m") },
                seq: 1,
                start_ms: 0,
                end_ms: 60_000,
                count: values.len() as u64,
                errors: BTreeMap::new(),
                latency,
                inputs: vec![FeatureStats {
                    name: "x".into(),
                    histogram,
                    moments,
                    kll_sketch: Some(kll.to_bytes()),
                }],
                outputs: vec![],
                classifier: None,
            }
        }

        #[test]
        fn merged_window_sketches_give_quantiles_and_a_bounded_ks() {
            let baseline = values(20_000, 0.0, 1);
            let edges = quantile_edges(&baseline, 10).expect("edges");
            let (histogram, moments, kll) = summary(&edges, &baseline);
            let profile = Profile {
                v: 1,
                reference_count: 20_000,
                inputs: vec![FeatureProfile {
                    name: "x".into(),
                    source: FeatureSource::Element { tensor: "x".into(), index: 0 },
                    histogram,
                    moments,
                    sketch: Some(FeatureSketch {
                        kind: SketchKind::Kll,
                        k: KLL_K,
                        reference: kll.to_bytes(),
                    }),
                }],
                outputs: vec![],
                classifier: None,
            };
            // Three devices, one of them shifted: the windows merge into one aggregate.
            let parts = [values(8_000, 0.0, 2), values(8_000, 0.0, 3), values(8_000, 1.5, 4)];
            let aggregates: Vec<AggregateWindow> = parts
                .iter()
                .enumerate()
                .map(|(i, part)| AggregateWindow::of(&window(&format!("d{i}"), &edges, part)))
                .collect();
            let total = AggregateWindow::merge_all(&aggregates).expect("merge").expect("some");
            let drift = compare(&profile, &total, &Thresholds::default());
            assert_eq!(drift.sketches.len(), 1);
            let sketch = &drift.sketches[0];
            assert_eq!((sketch.ks.reference_n, sketch.ks.current_n), (20_000, 24_000));

            let all: Vec<f64> = parts.iter().flatten().copied().collect();
            let exact = outpost_shared::drift::samples::ks_2samp(&baseline, &all)
                .expect("not empty")
                .statistic;
            assert!(
                (sketch.ks.statistic - exact).abs() <= sketch.ks.error_bound,
                "sketch KS {} exact {exact} bound {}",
                sketch.ks.statistic,
                sketch.ks.error_bound
            );
            assert!(sketch.ks.error_bound < 0.03, "bound {}", sketch.ks.error_bound);
            let mut sorted = all.clone();
            sorted.sort_by(f64::total_cmp);
            for (rank, q) in SKETCH_RANKS.iter().zip(&sketch.current_quantiles) {
                let true_rank = sorted.partition_point(|v| v <= q) as f64 / sorted.len() as f64;
                assert!((true_rank - rank).abs() <= sketch.rank_error, "rank {rank}: {true_rank}");
            }
            let json = serde_json::to_value(&drift).expect("json");
            assert!(json["sketches"][0]["ks"]["error_bound"].is_number(), "{json}");

            // Without a sketch on the windows' side there is no sketch comparison.
            let mut plain = total.clone();
            plain.inputs[0].kll_sketch = None;
            let drift = compare(&profile, &plain, &Thresholds::default());
            assert!(drift.sketches.is_empty());
            assert!(serde_json::to_value(&drift).expect("json").get("sketches").is_none());
        }
    }

    fn run(verdicts: &[Verdict]) -> Vec<Transition> {
        let policy = Hysteresis { open_after: 2, close_after: 3 };
        let (mut streaks, mut open) = (Streaks::default(), false);
        let mut transitions = Vec::new();
        for verdict in verdicts {
            let (next, transition) = policy.step(streaks, *verdict, open);
            streaks = next;
            match transition {
                Transition::Open => open = true,
                Transition::Close => open = false,
                Transition::Stay => {}
            }
            transitions.push(transition);
        }
        transitions
    }

    use Transition::{Close, Open, Stay};
    use Verdict::{Alert, Insufficient, Ok, Warn};

    #[test]
    fn an_alert_opens_after_two_in_a_row_and_closes_after_three_clear() {
        assert_eq!(
            run(&[Alert, Alert, Alert, Ok, Ok, Ok, Ok]),
            [Stay, Open, Stay, Stay, Stay, Close, Stay]
        );
    }

    #[test]
    fn a_flapping_feature_neither_opens_nor_closes() {
        assert_eq!(run(&[Alert, Ok, Alert, Warn, Alert, Ok, Alert]), [Stay; 7]);
        // Once open, warnings in between keep it open.
        assert_eq!(
            run(&[Alert, Alert, Ok, Ok, Warn, Ok, Ok, Ok]),
            [Stay, Open, Stay, Stay, Stay, Stay, Stay, Close]
        );
    }

    #[test]
    fn too_few_values_change_nothing() {
        assert_eq!(run(&[Alert, Insufficient, Alert]), [Stay, Stay, Open]);
        assert_eq!(
            run(&[Alert, Alert, Ok, Insufficient, Ok, Ok]),
            [Stay, Open, Stay, Stay, Stay, Close]
        );
    }
}
