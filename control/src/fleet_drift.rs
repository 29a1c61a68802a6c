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
