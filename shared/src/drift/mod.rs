//! Drift: how far the data a model sees has moved from its reference, per feature and for a
//! whole dataset, with a verdict from configurable thresholds.
//!
//! - [`special`]: the gamma and Kolmogorov functions behind the p-values.
//! - [`samples`]: metrics that need raw values (exact KS test, Wasserstein-1).
//! - [`binned`]: metrics on counts over shared bins (PSI, Jensen–Shannon, chi-square, KS
//!   bounds); these also work on merged statistics windows.
//!
//! [`compare_numeric`] and [`compare_categorical`] compute every metric for one feature from raw
//! values, [`compare_binned`] and [`compare_counts`] from merged windows against the baseline
//! profile; [`Thresholds::judge`] turns the metrics into a [`Verdict`]; [`DatasetDrift`] sums a
//! dataset up. The verdict rules, bins and smoothing are documented on each item and in
//! `docs/drift.md`.

pub mod binned;
pub mod samples;
pub mod special;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use binned::{
    ChiSquare, KsBounds, MIN_EXPECTED, PSI_EPSILON, chi_square, chi_square_ordered, js_distance,
    ks_bounds, psi,
};
pub use samples::{KsMethod, KsTest, ks_2samp, std_dev, wasserstein};

use crate::stats::{Histogram, Moments, quantile_edges};

/// Default number of reference-quantile bins for numeric features (deciles).
pub const DEFAULT_BINS: usize = 10;

/// How bad a drift finding is. Ordered: `Ok < Warn < Alert`; `Insufficient` means too few
/// samples to judge and never raises anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Insufficient,
    Ok,
    Warn,
    Alert,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Insufficient => "insufficient",
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Alert => "alert",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thresholds for one feature. Every field may be set fleet-wide or per feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureThresholds {
    /// PSI at or above this warns (default 0.1).
    pub psi_warn: f64,
    /// PSI at or above this alerts (default 0.25).
    pub psi_alert: f64,
    /// Jensen–Shannon distance at or above this alerts (default 0.1).
    pub js: f64,
    /// Wasserstein-1 divided by the reference's standard deviation at or above this alerts
    /// (default 0.1).
    pub normed_wasserstein: f64,
    /// A KS or chi-square p-value below this warns (default 0.05).
    pub p_value: f64,
    /// Fewer observations than this on either side gives [`Verdict::Insufficient`] (default 30).
    pub min_samples: u64,
}

impl Default for FeatureThresholds {
    fn default() -> Self {
        Self {
            psi_warn: 0.1,
            psi_alert: 0.25,
            js: 0.1,
            normed_wasserstein: 0.1,
            p_value: 0.05,
            min_samples: 30,
        }
    }
}

/// Per-feature overrides of [`FeatureThresholds`]: unset fields fall back to the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdOverrides {
    pub psi_warn: Option<f64>,
    pub psi_alert: Option<f64>,
    pub js: Option<f64>,
    pub normed_wasserstein: Option<f64>,
    pub p_value: Option<f64>,
    pub min_samples: Option<u64>,
}

/// Every threshold drift is judged by: defaults, per-feature overrides, and the share of
/// alerting features at which a whole dataset counts as drifted.
///
/// The TOML/JSON form is flat for the defaults with a `features` table for overrides:
/// `psi_alert = 0.3` and `[features.age] psi_alert = 0.5`. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub psi_warn: f64,
    pub psi_alert: f64,
    pub js: f64,
    pub normed_wasserstein: f64,
    pub p_value: f64,
    pub min_samples: u64,
    /// Share of judged features at [`Verdict::Alert`] from which the dataset alerts (default
    /// 0.5, as in Evidently's dataset drift).
    pub drift_share: f64,
    pub features: BTreeMap<String, ThresholdOverrides>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::with_defaults(FeatureThresholds::default())
    }
}

/// A threshold set that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("threshold {name} for {scope} is {value}; it must be a finite number >= 0")]
    Negative { scope: String, name: &'static str, value: f64 },
    #[error("psi_warn ({warn}) is above psi_alert ({alert}) for {scope}")]
    WarnAboveAlert { scope: String, warn: f64, alert: f64 },
    #[error("drift_share is {0}; it must be in (0, 1]")]
    DriftShare(f64),
}

impl Thresholds {
    /// Thresholds with the given defaults, no overrides, and a drift share of 0.5.
    pub fn with_defaults(defaults: FeatureThresholds) -> Self {
        let FeatureThresholds { psi_warn, psi_alert, js, normed_wasserstein, p_value, min_samples } =
            defaults;
        Self {
            psi_warn,
            psi_alert,
            js,
            normed_wasserstein,
            p_value,
            min_samples,
            drift_share: 0.5,
            features: BTreeMap::new(),
        }
    }

    /// The thresholds that apply to features without overrides.
    pub fn defaults(&self) -> FeatureThresholds {
        FeatureThresholds {
            psi_warn: self.psi_warn,
            psi_alert: self.psi_alert,
            js: self.js,
            normed_wasserstein: self.normed_wasserstein,
            p_value: self.p_value,
            min_samples: self.min_samples,
        }
    }

    /// The thresholds in force for `feature`.
    pub fn for_feature(&self, feature: &str) -> FeatureThresholds {
        let d = self.defaults();
        match self.features.get(feature) {
            None => d,
            Some(o) => FeatureThresholds {
                psi_warn: o.psi_warn.unwrap_or(d.psi_warn),
                psi_alert: o.psi_alert.unwrap_or(d.psi_alert),
                js: o.js.unwrap_or(d.js),
                normed_wasserstein: o.normed_wasserstein.unwrap_or(d.normed_wasserstein),
                p_value: o.p_value.unwrap_or(d.p_value),
                min_samples: o.min_samples.unwrap_or(d.min_samples),
            },
        }
    }

    /// Checks that every threshold is usable.
    pub fn validate(&self) -> Result<(), ThresholdError> {
        if !(self.drift_share > 0.0 && self.drift_share <= 1.0) {
            return Err(ThresholdError::DriftShare(self.drift_share));
        }
        let scopes = std::iter::once(("the defaults".to_string(), self.defaults())).chain(
            self.features.keys().map(|name| (format!("feature {name}"), self.for_feature(name))),
        );
        for (scope, t) in scopes {
            for (name, value) in [
                ("psi_warn", t.psi_warn),
                ("psi_alert", t.psi_alert),
                ("js", t.js),
                ("normed_wasserstein", t.normed_wasserstein),
                ("p_value", t.p_value),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(ThresholdError::Negative { scope, name, value });
                }
            }
            if t.psi_warn > t.psi_alert {
                return Err(ThresholdError::WarnAboveAlert {
                    scope,
                    warn: t.psi_warn,
                    alert: t.psi_alert,
                });
            }
        }
        Ok(())
    }

    /// The verdict for one feature's metrics, with the reasons that raised it.
    ///
    /// - Alert: a large difference — PSI ≥ `psi_alert`, or JS ≥ `js`, or normed Wasserstein
    ///   (from windows: its lower bound, the normed mean shift) ≥ `normed_wasserstein` — that is
    ///   also significant: the KS (raw values) or chi-square (bins) p-value is below `p_value`
    ///   (divided by the number of features judged together, see [`Thresholds::judge_among`]).
    ///   Small samples inflate PSI and JS through empty bins; the test keeps noise from alerting.
    /// - Warn: a large difference that is not significant, PSI ≥ `psi_warn`, or a significant
    ///   test alone (large samples find tiny, harmless shifts significant, so a p-value alone
    ///   never alerts).
    /// - Insufficient: fewer than `min_samples` observations on either side.
    pub fn judge(&self, metrics: &FeatureMetrics) -> (Verdict, Vec<String>) {
        self.judge_among(metrics, 1)
    }

    /// [`Thresholds::judge`] for one of `family` features tested together (a dataset, a
    /// device's inputs): the significance level is divided by `family` (Bonferroni), so the
    /// chance that *any* undrifted feature of the family alerts stays at `p_value` instead of
    /// growing with the number of features.
    pub fn judge_among(&self, metrics: &FeatureMetrics, family: usize) -> (Verdict, Vec<String>) {
        let mut t = self.for_feature(&metrics.feature);
        let level = if family > 1 {
            let level = format!("{}/{family} (Bonferroni over {family} features)", t.p_value);
            t.p_value /= family as f64;
            level
        } else {
            t.p_value.to_string()
        };
        if metrics.reference_count < t.min_samples || metrics.current_count < t.min_samples {
            return (
                Verdict::Insufficient,
                vec![format!(
                    "{} reference and {} current values; at least {} each are needed",
                    metrics.reference_count, metrics.current_count, t.min_samples
                )],
            );
        }
        let mut magnitude = Vec::new();
        let mut warnings = Vec::new();
        if let Some(psi) = metrics.psi {
            if psi >= t.psi_alert {
                magnitude.push(format!("PSI {psi:.4} >= {}", t.psi_alert));
            } else if psi >= t.psi_warn {
                warnings.push(format!("PSI {psi:.4} >= {}", t.psi_warn));
            }
        }
        if let Some(js) = metrics.js_distance.filter(|js| *js >= t.js) {
            magnitude.push(format!("Jensen-Shannon distance {js:.4} >= {}", t.js));
        }
        if let Some(w) = metrics.normed_wasserstein.filter(|w| *w >= t.normed_wasserstein) {
            magnitude.push(format!("normed Wasserstein {w:.4} >= {}", t.normed_wasserstein));
        }
        if let Some(shift) = metrics.normed_mean_shift.filter(|s| *s >= t.normed_wasserstein) {
            magnitude.push(format!(
                "mean moved {shift:.4} reference standard deviations (normed Wasserstein >= \
                 that) >= {}",
                t.normed_wasserstein
            ));
        }
        // The test that says whether the difference is more than sampling noise: KS on raw
        // values, chi-square on bins. PSI and JS of small samples are inflated by empty bins,
        // so a large value alone is not evidence of drift.
        let test = match (metrics.ks, metrics.chi_square) {
            (Some(ks), _) => Some(("KS", ks.p_value)),
            (None, Some(chi)) => Some(("chi-square", chi.p_value)),
            (None, None) => None,
        };
        let significant = match test {
            Some((name, p)) if p < t.p_value => Some(format!("{name} p-value {p:.3e} < {level}")),
            Some(_) => None,
            // No test applies: the magnitude decides on its own.
            None => Some(String::new()),
        };
        match (magnitude.is_empty(), significant) {
            (false, Some(significant)) => {
                let mut reasons = magnitude;
                reasons.extend(warnings);
                reasons.extend(Some(significant).filter(|s| !s.is_empty()));
                (Verdict::Alert, reasons)
            }
            (false, None) => {
                let (name, p) = test.unwrap_or(("test", 1.0));
                let mut reasons = magnitude;
                reasons.push(format!(
                    "but the {name} p-value {p:.3e} is not below {level}: could be sampling noise"
                ));
                (Verdict::Warn, reasons)
            }
            (true, Some(significant)) => {
                warnings.extend(Some(significant).filter(|s| !s.is_empty()));
                if warnings.is_empty() {
                    (Verdict::Ok, warnings)
                } else {
                    (Verdict::Warn, warnings)
                }
            }
            (true, None) if warnings.is_empty() => (Verdict::Ok, Vec::new()),
            (true, None) => (Verdict::Warn, warnings),
        }
    }
}

/// Whether a feature is compared as numbers or as categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    Numeric,
    Categorical,
}

/// Every drift metric of one feature. Metrics that do not apply to the feature's kind, or that
/// are undefined for the data (e.g. normed Wasserstein of a constant reference), are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureMetrics {
    pub feature: String,
    pub kind: FeatureKind,
    pub reference_count: u64,
    pub current_count: u64,
    /// Values left out on each side: empty cells, and for numeric features NaN or ±inf.
    pub reference_missing: u64,
    pub current_missing: u64,
    /// The bins PSI, JS and chi-square compare: for numeric features the reference-quantile
    /// edges (underflow and overflow bins lie outside them); for categorical ones the
    /// categories, sorted.
    pub bins: Bins,
    pub reference_counts: Vec<u64>,
    pub current_counts: Vec<u64>,
    pub psi: Option<f64>,
    pub js_distance: Option<f64>,
    pub ks: Option<KsTest>,
    pub wasserstein: Option<f64>,
    pub normed_wasserstein: Option<f64>,
    pub chi_square: Option<ChiSquare>,
    /// From binned data only (windows): the interval the KS statistic lies in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ks_bounds: Option<KsBounds>,
    /// From binned data only: `|mean_cur − mean_ref| / std_ref`, a lower bound of the normed
    /// Wasserstein distance (W1 is never below the difference of the means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normed_mean_shift: Option<f64>,
}

/// The bins of a feature comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bins {
    /// Counts are laid out `[underflow, bin 0, …, bin k-1, overflow]` over these edges.
    Edges(Vec<f64>),
    Categories(Vec<String>),
}

/// Compares two samples of a numeric feature. Non-finite values are counted as missing.
///
/// Bins: `bins` reference quantiles with numpy's linear interpolation, duplicate edges merged
/// ([`quantile_edges`]), plus an underflow and an overflow bin for current values outside the
/// reference's range.
pub fn compare_numeric(
    feature: &str,
    reference: &[f64],
    current: &[f64],
    bins: usize,
) -> FeatureMetrics {
    let finite =
        |values: &[f64]| -> Vec<f64> { values.iter().copied().filter(|v| v.is_finite()).collect() };
    let (reference_values, current_values) = (finite(reference), finite(current));
    let counts_over = |edges: &[f64], values: &[f64]| -> Vec<u64> {
        match Histogram::new(edges.to_vec()) {
            Ok(mut histogram) => {
                for v in values {
                    histogram.observe(*v);
                }
                let mut counts = vec![histogram.underflow];
                counts.extend_from_slice(&histogram.counts);
                counts.push(histogram.overflow);
                counts
            }
            Err(_) => Vec::new(),
        }
    };
    let edges = quantile_edges(&reference_values, bins.max(1)).unwrap_or_default();
    let reference_counts = counts_over(&edges, &reference_values);
    let current_counts = counts_over(&edges, &current_values);
    let ks = ks_2samp(&reference_values, &current_values);
    let wasserstein = wasserstein(&reference_values, &current_values);
    let normed_wasserstein = match (wasserstein, std_dev(&reference_values)) {
        (Some(w), Some(s)) if s > 0.0 => Some(w / s),
        _ => None,
    };
    FeatureMetrics {
        feature: feature.to_string(),
        kind: FeatureKind::Numeric,
        reference_count: reference_values.len() as u64,
        current_count: current_values.len() as u64,
        reference_missing: (reference.len() - reference_values.len()) as u64,
        current_missing: (current.len() - current_values.len()) as u64,
        psi: psi(&reference_counts, &current_counts),
        js_distance: js_distance(&reference_counts, &current_counts),
        chi_square: None,
        bins: Bins::Edges(edges),
        reference_counts,
        current_counts,
        ks,
        wasserstein,
        normed_wasserstein,
        ks_bounds: None,
        normed_mean_shift: None,
    }
}

/// Compares two samples of a categorical feature; `None` values are missing. Bins are the
/// union of the categories seen on either side, so a category new in the current data gets a
/// bin with an empty reference (PSI smooths it with [`PSI_EPSILON`]).
pub fn compare_categorical(
    feature: &str,
    reference: &[Option<&str>],
    current: &[Option<&str>],
) -> FeatureMetrics {
    let categories: BTreeSet<&str> = reference.iter().chain(current).flatten().copied().collect();
    let categories: Vec<&str> = categories.into_iter().collect();
    let counts = |values: &[Option<&str>]| -> Vec<u64> {
        let mut counts = vec![0u64; categories.len()];
        for value in values.iter().flatten() {
            if let Ok(index) = categories.binary_search(value) {
                counts[index] += 1;
            }
        }
        counts
    };
    let (reference_counts, current_counts) = (counts(reference), counts(current));
    let present = |values: &[Option<&str>]| values.iter().flatten().count() as u64;
    FeatureMetrics {
        feature: feature.to_string(),
        kind: FeatureKind::Categorical,
        reference_count: present(reference),
        current_count: present(current),
        reference_missing: reference.len() as u64 - present(reference),
        current_missing: current.len() as u64 - present(current),
        psi: psi(&reference_counts, &current_counts),
        js_distance: js_distance(&reference_counts, &current_counts),
        chi_square: chi_square(&reference_counts, &current_counts),
        bins: Bins::Categories(categories.iter().map(|c| c.to_string()).collect()),
        reference_counts,
        current_counts,
        ks: None,
        wasserstein: None,
        normed_wasserstein: None,
        ks_bounds: None,
        normed_mean_shift: None,
    }
}

/// Compares merged window histograms of a numeric feature with its baseline, both over the
/// baseline profile's edges. Counts are `[underflow, bins…, overflow]`; NaN counts are missing.
/// PSI and Jensen–Shannon are exact; chi-square is exact over the bins after merging sparse
/// neighbours ([`chi_square_ordered`]); the KS statistic is bounded
/// ([`KsBounds`]) and the normed Wasserstein distance bounded below by the normed mean shift.
/// `None` when the histograms have different edges (a window of another model version).
pub fn compare_binned(
    feature: &str,
    reference: (&Histogram, &Moments),
    current: (&Histogram, &Moments),
) -> Option<FeatureMetrics> {
    let ((reference, reference_moments), (current, current_moments)) = (reference, current);
    if reference.edges != current.edges
        || reference.validate().is_err()
        || current.validate().is_err()
    {
        return None;
    }
    let counts = |h: &Histogram| -> Vec<u64> {
        let mut counts = Vec::with_capacity(h.counts.len() + 2);
        counts.push(h.underflow);
        counts.extend_from_slice(&h.counts);
        counts.push(h.overflow);
        counts
    };
    let (reference_counts, current_counts) = (counts(reference), counts(current));
    let sum = |c: &[u64]| c.iter().fold(0u64, |a, b| a.saturating_add(*b));
    let std = reference_moments.std_dev();
    let normed_mean_shift = (std > 0.0 && reference_moments.count > 0 && current_moments.count > 0)
        .then(|| (current_moments.mean - reference_moments.mean).abs() / std)
        .filter(|shift| shift.is_finite());
    Some(FeatureMetrics {
        feature: feature.to_string(),
        kind: FeatureKind::Numeric,
        reference_count: sum(&reference_counts),
        current_count: sum(&current_counts),
        reference_missing: reference.nan,
        current_missing: current.nan,
        psi: psi(&reference_counts, &current_counts),
        js_distance: js_distance(&reference_counts, &current_counts),
        chi_square: chi_square_ordered(&reference_counts, &current_counts),
        ks_bounds: ks_bounds(&reference_counts, &current_counts),
        normed_mean_shift,
        bins: Bins::Edges(reference.edges.clone()),
        reference_counts,
        current_counts,
        ks: None,
        wasserstein: None,
        normed_wasserstein: None,
    })
}

/// Compares class counts (a classifier's predictions) with the baseline's: prediction drift.
/// Classes are named by index. `None` when the class counts differ in length.
pub fn compare_counts(feature: &str, reference: &[u64], current: &[u64]) -> Option<FeatureMetrics> {
    if reference.len() != current.len() {
        return None;
    }
    let sum = |c: &[u64]| c.iter().fold(0u64, |a, b| a.saturating_add(*b));
    Some(FeatureMetrics {
        feature: feature.to_string(),
        kind: FeatureKind::Categorical,
        reference_count: sum(reference),
        current_count: sum(current),
        reference_missing: 0,
        current_missing: 0,
        psi: psi(reference, current),
        js_distance: js_distance(reference, current),
        chi_square: chi_square(reference, current),
        bins: Bins::Categories((0..reference.len()).map(|i| i.to_string()).collect()),
        reference_counts: reference.to_vec(),
        current_counts: current.to_vec(),
        ks: None,
        wasserstein: None,
        normed_wasserstein: None,
        ks_bounds: None,
        normed_mean_shift: None,
    })
}

/// One feature's metrics with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    #[serde(flatten)]
    pub metrics: FeatureMetrics,
    pub verdict: Verdict,
    /// Why the verdict is not `ok`, one line per threshold crossed.
    pub reasons: Vec<String>,
}

/// The drift of a whole dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDrift {
    pub features: Vec<FeatureDrift>,
    /// Features with enough data to judge.
    pub judged: u64,
    /// Judged features at [`Verdict::Alert`].
    pub alerting: u64,
    /// `alerting / judged` (0 when nothing could be judged).
    pub drift_share: f64,
    /// Alert when `drift_share` reaches the configured share; warn when any feature warns or
    /// alerts; ok otherwise; insufficient when no feature could be judged.
    pub verdict: Verdict,
}

impl DatasetDrift {
    /// Judges every feature (as one family, see [`Thresholds::judge_among`]) and the dataset.
    pub fn judge(features: Vec<FeatureMetrics>, thresholds: &Thresholds) -> Self {
        let family =
            features.iter().filter(|m| m.ks.is_some() || m.chi_square.is_some()).count().max(1);
        let features: Vec<FeatureDrift> = features
            .into_iter()
            .map(|metrics| {
                let (verdict, reasons) = thresholds.judge_among(&metrics, family);
                FeatureDrift { metrics, verdict, reasons }
            })
            .collect();
        let judged = features.iter().filter(|f| f.verdict != Verdict::Insufficient).count() as u64;
        let alerting = features.iter().filter(|f| f.verdict == Verdict::Alert).count() as u64;
        let drift_share = if judged == 0 { 0.0 } else { alerting as f64 / judged as f64 };
        let worst = features.iter().map(|f| f.verdict).max().unwrap_or(Verdict::Insufficient);
        let verdict = if judged == 0 {
            Verdict::Insufficient
        } else if drift_share >= thresholds.drift_share {
            Verdict::Alert
        } else if worst >= Verdict::Warn {
            Verdict::Warn
        } else {
            Verdict::Ok
        };
        Self { features, judged, alerting, drift_share, verdict }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal_like(n: usize, shift: f64, scale: f64) -> Vec<f64> {
        // A deterministic bell-shaped sample: the sum of three uniform grids.
        (0..n)
            .map(|i| {
                let u = |k: usize| ((i * k + 7) % n) as f64 / n as f64 - 0.5;
                shift + scale * (u(1) + u(7919) + u(104_729))
            })
            .collect()
    }

    #[test]
    fn a_shifted_feature_alerts_and_an_unshifted_one_does_not() {
        let reference = normal_like(2000, 0.0, 1.0);
        let thresholds = Thresholds::default();
        let same = compare_numeric("x", &reference, &normal_like(1500, 0.0, 1.0), DEFAULT_BINS);
        let (verdict, reasons) = thresholds.judge(&same);
        assert!(verdict <= Verdict::Warn, "{verdict}: {reasons:?}");
        let moved = compare_numeric("x", &reference, &normal_like(1500, 1.0, 1.0), DEFAULT_BINS);
        let (verdict, reasons) = thresholds.judge(&moved);
        assert_eq!(verdict, Verdict::Alert, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("PSI")), "{reasons:?}");
    }

    #[test]
    fn non_finite_values_are_missing_and_small_samples_insufficient() {
        let metrics =
            compare_numeric("x", &[1.0, f64::NAN, 2.0], &[f64::INFINITY, 3.0], DEFAULT_BINS);
        assert_eq!((metrics.reference_missing, metrics.current_missing), (1, 1));
        assert_eq!((metrics.reference_count, metrics.current_count), (2, 1));
        let (verdict, _) = Thresholds::default().judge(&metrics);
        assert_eq!(verdict, Verdict::Insufficient);
    }

    #[test]
    fn a_new_category_alerts() {
        let reference: Vec<Option<&str>> =
            (0..1000).map(|i| Some(if i % 2 == 0 { "a" } else { "b" })).collect();
        let current: Vec<Option<&str>> = (0..1000)
            .map(|i| {
                Some(if i % 10 == 0 {
                    "new"
                } else if i % 2 == 0 {
                    "a"
                } else {
                    "b"
                })
            })
            .chain([None])
            .collect();
        let metrics = compare_categorical("c", &reference, &current);
        assert_eq!(metrics.bins, Bins::Categories(vec!["a".into(), "b".into(), "new".into()]));
        assert_eq!(metrics.current_missing, 1);
        assert_eq!(Thresholds::default().judge(&metrics).0, Verdict::Alert);
    }

    #[test]
    fn per_feature_overrides_apply_and_bad_thresholds_are_named() {
        let mut thresholds = Thresholds::default();
        thresholds.features.insert(
            "age".into(),
            ThresholdOverrides { psi_alert: Some(0.5), ..Default::default() },
        );
        assert_eq!(thresholds.for_feature("age").psi_alert, 0.5);
        assert_eq!(thresholds.for_feature("age").psi_warn, 0.1);
        assert_eq!(thresholds.for_feature("other").psi_alert, 0.25);
        assert!(thresholds.validate().is_ok());
        thresholds
            .features
            .insert("bad".into(), ThresholdOverrides { psi_warn: Some(0.9), ..Default::default() });
        let error = thresholds.validate().expect_err("warn above alert");
        assert_eq!(error.to_string(), "psi_warn (0.9) is above psi_alert (0.25) for feature bad");
    }

    #[test]
    fn binned_comparison_is_exact_where_it_can_be_and_bounded_elsewhere() {
        let edges = quantile_edges(&normal_like(2000, 0.0, 1.0), DEFAULT_BINS).expect("edges");
        let binned = |values: &[f64]| {
            let mut histogram = Histogram::new(edges.clone()).expect("edges");
            let mut moments = Moments::default();
            for v in values {
                histogram.observe(*v);
                moments.observe(*v);
            }
            (histogram, moments)
        };
        let reference_values = normal_like(2000, 0.0, 1.0);
        let current_values = normal_like(1500, 0.5, 1.0);
        let (reference, reference_moments) = binned(&reference_values);
        let (current, current_moments) = binned(&current_values);
        let from_windows =
            compare_binned("x", (&reference, &reference_moments), (&current, &current_moments))
                .expect("same edges");
        let from_values = compare_numeric("x", &reference_values, &current_values, DEFAULT_BINS);
        // Same bins, so PSI and JS agree exactly with the raw computation.
        assert_eq!(from_windows.reference_counts, from_values.reference_counts);
        assert_eq!(from_windows.psi, from_values.psi);
        assert_eq!(from_windows.js_distance, from_values.js_distance);
        // The exact KS statistic lies within the bounds; the mean shift bounds W1 from below.
        let bounds = from_windows.ks_bounds.expect("bounds");
        let ks = from_values.ks.expect("ks").statistic;
        assert!(bounds.lower <= ks + 1e-12 && ks <= bounds.upper + 1e-12, "{bounds:?} vs {ks}");
        let shift = from_windows.normed_mean_shift.expect("shift");
        assert!(shift <= from_values.normed_wasserstein.expect("w") + 1e-12);
        assert_eq!(Thresholds::default().judge(&from_windows).0, Verdict::Alert);
        // Histograms over other edges are not comparable.
        let other = Histogram::new(vec![0.0, 1.0]).expect("edges");
        assert!(
            compare_binned("x", (&reference, &reference_moments), (&other, &current_moments))
                .is_none()
        );
    }

    #[test]
    fn many_features_tested_together_share_the_significance_level() {
        let reference = normal_like(2000, 0.0, 1.0);
        let mut metrics =
            compare_numeric("x", &reference, &normal_like(1500, 1.0, 1.0), DEFAULT_BINS);
        let ks = metrics.ks.as_mut().expect("ks");
        ks.p_value = 0.01;
        let thresholds = Thresholds::default();
        assert_eq!(thresholds.judge(&metrics).0, Verdict::Alert, "alone: 0.01 < 0.05");
        let (verdict, reasons) = thresholds.judge_among(&metrics, 10);
        assert_eq!(verdict, Verdict::Warn, "among ten: 0.01 is not below 0.005");
        assert!(reasons.iter().any(|r| r.contains("0.05/10 (Bonferroni over 10 features)")));
    }

    #[test]
    fn the_dataset_alerts_from_the_drift_share() {
        let reference = normal_like(1000, 0.0, 1.0);
        let moved = compare_numeric("a", &reference, &normal_like(1000, 2.0, 1.0), DEFAULT_BINS);
        let same = compare_numeric("b", &reference, &reference, DEFAULT_BINS);
        let thresholds = Thresholds::default();
        let dataset = DatasetDrift::judge(vec![moved.clone(), same.clone()], &thresholds);
        assert_eq!((dataset.judged, dataset.alerting), (2, 1));
        assert_eq!(dataset.verdict, Verdict::Alert, "half the features alert");
        let dataset = DatasetDrift::judge(vec![moved, same.clone(), same], &thresholds);
        assert_eq!(dataset.verdict, Verdict::Warn, "a third alert: below the share");
    }
}
