//! Fleet drift: merged statistics windows of one model version compared with the baseline
//! profile in its bundle, per feature (inputs), per output and for the predicted classes.
//!
//! Windows bin every feature over the profile's own edges, so PSI, Jensen–Shannon and
//! chi-square computed here are exact for the merged data; the KS statistic is bounded and the
//! normed Wasserstein distance bounded from below (see `docs/drift.md`). Pure functions: the
//! API handler ([`crate::api::drift`]) fetches the aggregates and the profile.

use outpost_shared::drift::{self, DatasetDrift, FeatureMetrics, Thresholds, Verdict};
use outpost_shared::profile::Profile;
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
}

impl WindowDrift {
    /// The worse of the input and output verdicts.
    pub fn verdict(&self) -> Verdict {
        self.inputs.verdict.max(self.outputs.verdict)
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
    let mut side = |baseline: &[outpost_shared::profile::FeatureProfile],
                    current: &[outpost_shared::wire::FeatureStats]|
     -> Vec<FeatureMetrics> {
        let mut out = Vec::new();
        for stats in current {
            let Some(reference) = baseline.iter().find(|b| b.name == stats.name) else {
                not_comparable.push(stats.name.clone());
                continue;
            };
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
    }
}
